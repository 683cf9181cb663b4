"""The vLLM backend: the model served by vLLM in its own environment (qwenvl.inference.
vllm_worker, started in .venv-vllm), asked through the same interface as the transformers
backend. The frames this process decoded, their real frame rate and the user texts go to the
worker; the answers come back with their token counts.

A checkpoint reaches vLLM whole. A LoRA adapter of the language model and the vision tower is
served as an adapter (vision-tower LoRA switched on when the adapter has it); an adapter vLLM
cannot take (one that trains the projector in full, or a QLoRA adapter) is merged first, in
fp32, into the folder --vllm-merged-dir names (default: a cache beside the adapter), said in one
line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from qwenvl.inference.backend import Answer, Backend, Request
from qwenvl.inference.spec import ModelSpec, read_spec
from qwenvl.video import frame_size

PROJECT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = PROJECT / ".venv-vllm" / "bin" / "python"
MERGED_FROM = "merged_from.json"  # in a merged cache: the adapter it was made from


def vllm_python() -> Path:
    """The interpreter of vLLM's environment (QWENVL_VLLM_PYTHON, else .venv-vllm's)."""
    found = Path(os.environ.get("QWENVL_VLLM_PYTHON", VLLM_PYTHON))
    if not found.is_file():
        raise ValueError(
            f"the vLLM backend runs in its own environment and there is none at {found}: "
            "make vllm builds it (docs/vllm.md)"
        )
    return found


def served_adapter(spec: ModelSpec) -> dict | None:
    """How vLLM serves a LoRA adapter ({"path", "rank", "vision"}), or None when it cannot
    (modules trained in full beside the adapter, or a 4-bit base): then it is merged first."""
    config = json.loads((Path(spec.path) / "adapter_config.json").read_text())
    if config.get("modules_to_save") or (spec.tuning and spec.tuning.quantization):
        return None
    from safetensors import safe_open

    # peft saves target_modules as name endings shared by both towers: the weights tell.
    with safe_open(str(Path(spec.path) / "adapter_model.safetensors"), "pt") as weights:
        vision = any(".visual." in key and "lora_" in key for key in weights.keys())
    return {
        "path": str(Path(spec.path).resolve()),
        "rank": int(config.get("r", 8)),
        "vision": vision,
    }


def merged_for_vllm(spec: ModelSpec, folder: Path | None) -> ModelSpec:
    """The adapter merged into its base in fp32 (qwenvl.inference.merging), kept in `folder`
    (default: beside the adapter) and used again while the adapter is the same."""
    from qwenvl.data.samples import file_hash
    from qwenvl.files import atomic_output_dir

    adapter = Path(spec.path)
    folder = folder or adapter.parent / f"{adapter.name}-merged-fp32"
    made_from = {"adapter": str(adapter.resolve()),
                 "xxh3": file_hash(adapter / "adapter_model.safetensors")}  # fmt: skip
    record = folder / MERGED_FROM
    if record.is_file() and json.loads(record.read_text()) == made_from:
        print(f"{spec.path}: served merged, from {folder}", file=sys.stderr)
        return read_spec(str(folder))
    print(
        f"{spec.path}: vLLM cannot serve this adapter as it is (it trains modules in full, or "
        f"its base is 4-bit): merging it in fp32 into {folder} first",
        file=sys.stderr,
    )
    from qwenvl.checkpoint import InferenceFiles
    from qwenvl.inference.transformers_backend import TransformersBackend

    backend = TransformersBackend.load(spec, device="cpu", dtype="fp32", quantized=False)
    merged = backend.model.merge_and_unload()
    overwrite = folder.is_dir() and not record.is_file() and not any(folder.iterdir())
    with atomic_output_dir(folder, overwrite or record.is_file()) as tmp:
        merged.save_pretrained(tmp)
        InferenceFiles(backend.processor, spec.video, spec.answer_format, spec.prompt).save(tmp)
        (tmp / MERGED_FROM).write_text(json.dumps(made_from) + "\n")
    return read_spec(str(folder))


def model_length(spec: ModelSpec) -> int:
    """Tokens a prompt and its answer take at most: the video at its bounds (a group of 2
    frames is its patches, its stamp and two markers) and room for the text and the answer."""
    video = spec.video
    groups = math.ceil(video.max_frames / 2)
    return groups * (video.max_pixels // 1024 + 8) + len(spec.answer_format.widest_answer()) + 2048


class VllmBackend(Backend):
    name = "vllm"

    def __init__(self, spec: ModelSpec, worker: subprocess.Popen, describe: str) -> None:
        self.spec, self.worker, self._describe = spec, worker, describe

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        device: str | None = None,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        max_batch: int = 8,
        merged_dir: str | None = None,
    ) -> VllmBackend:
        if device is not None:
            raise ValueError(
                "vLLM places the model itself: choose GPUs with CUDA_VISIBLE_DEVICES and "
                "--tensor-parallel-size, not --device"
            )
        python = vllm_python()
        served, lora = spec, None
        if spec.base is not None:
            lora = served_adapter(spec)
            if lora is None:
                served = merged_for_vllm(spec, Path(merged_dir) if merged_dir else None)
        height, width = frame_size(1080, 1920, spec.video)  # the largest frames to budget for
        load = {
            "op": "load",
            "model": served.base if lora else served.path,
            "tokenizer": served.processor_path,
            "dtype": dtype,
            "lora": lora,
            "video": spec.video.__dict__,
            "grammar": spec.answer_format.grammar(),
            "max_model_len": model_length(spec),
            "max_batch": max_batch,
            "tensor_parallel_size": tensor_parallel_size,
            "profile_frame": {"width": width, "height": height},
            "max_views": max(1, len(spec.prompt.cameras) if spec.prompt else 1),
        }
        env = {**os.environ, "PYTHONPATH": str(PROJECT)}
        worker = subprocess.Popen(
            [str(python), "-m", "qwenvl.inference.vllm_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        backend = cls(spec, worker, "")
        backend._describe = backend.call(load)["describe"]
        return backend

    def call(self, message: dict) -> dict:
        from qwenvl.inference.vllm_worker import read_message, write_message

        try:
            write_message(self.worker.stdin, message)
            reply = read_message(self.worker.stdout)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            code = self.worker.wait()
            raise ValueError(f"the vLLM worker ended (exit status {code}; its log is above)")
        if "error" in reply:
            self.close()
            raise ValueError(f"vLLM: {reply['error']}")
        return reply

    def describe(self) -> str:
        return f"{self.spec.kind} model in {self._describe}, answers {self.spec.answer_format}"

    def answer(
        self,
        requests: Sequence[Request],
        constrained: bool = True,
        max_new_tokens: int | None = None,
    ) -> list[Answer]:
        from qwenvl.inference.transformers_backend import answer_token_budget

        budget = max_new_tokens or answer_token_budget(
            self.tokenizer, self.spec.answer_format, constrained
        )
        reply = self.call(
            {
                "op": "answer",
                "requests": [{"views": r.views, "human": r.human} for r in requests],
                "constrained": constrained,
                "max_tokens": budget,
            }
        )
        self.last_prompt_ids = [a["prompt_ids"] for a in reply["answers"]]
        return [
            Answer(a["text"], len(a["prompt_ids"]), a["answer_tokens"]) for a in reply["answers"]
        ]

    @cached_property
    def tokenizer(self):
        """The model's tokenizer, for the generation budget (as the transformers backend's)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.spec.processor_path)

    def close(self) -> None:
        if self.worker.poll() is None:
            try:
                from qwenvl.inference.vllm_worker import write_message

                write_message(self.worker.stdin, {"op": "close"})
                self.worker.stdin.close()
                self.worker.wait(timeout=120)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.worker.kill()
                self.worker.wait()
