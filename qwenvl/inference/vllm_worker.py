"""The vLLM side of --backend vllm: a process in vLLM's own environment (.venv-vllm, `make
vllm`) that serves one model and answers the requests the main process sends it.

It is started by qwenvl.inference.vllm_backend with the project's folder on PYTHONPATH, and
imports only what that environment holds (vLLM, torch, transformers < 5.20, PyAV, pyarrow): the
frames arrive decoded by our decoder, are sampled and sized here by the same prepare_clip as
training's, and reach vLLM with their real metadata and vLLM's own sampling and resizing off;
the prompt is rendered from the same chat messages by the model's own chat template, and the
answers are constrained by the same grammar text.

Messages, both ways: an 8-byte big-endian length, then a pickled dict (two processes of this
project, on one machine). Everything vLLM prints goes to stderr; the replies have their own
descriptor.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import traceback
from dataclasses import asdict

# Frames arrive sampled and sized by prepare_clip: vLLM's processor must not redo either.
VIDEO_KWARGS = {"do_sample_frames": False, "do_resize": False, "cap_pixels_per_frame": False}
DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp32": "float32"}
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's max_lora_rank takes


def read_message(stream) -> dict | None:
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack(">Q", header)
    return pickle.loads(stream.read(size))


def write_message(stream, message: dict) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">Q", len(payload)) + payload)
    stream.flush()


class Served:
    """One model in vLLM, answering batches of requests."""

    def __init__(self, load: dict) -> None:
        from vllm import LLM
        from vllm.platforms import current_platform

        from qwenvl.video import VideoSettings

        self.video = VideoSettings(**load["video"])
        self.grammar = load["grammar"]
        self.lora = None
        options = {}
        if load.get("lora"):
            from vllm.lora.request import LoRARequest

            lora = load["lora"]
            rank = next(r for r in LORA_RANKS if r >= lora["rank"])
            options = {
                "enable_lora": True,
                "max_lora_rank": rank,
                "max_loras": 1,
                # Without it, LoRA on the vision tower and projector is dropped without a word.
                "enable_tower_connector_lora": lora["vision"],
            }
            self.lora = LoRARequest("adapter", 1, lora["path"])
        if current_platform.is_cpu():
            options["kv_cache_memory_bytes"] = load.get("kv_cache_bytes", 1 << 30)
        self.llm = LLM(
            model=load["model"],
            tokenizer=load["tokenizer"],
            dtype=DTYPES[load["dtype"]],
            seed=0,
            max_model_len=load["max_model_len"],
            max_num_seqs=load["max_batch"],
            max_num_batched_tokens=max(8192, load["max_model_len"]),
            enable_prefix_caching=False,
            enforce_eager=current_platform.is_cpu(),
            tensor_parallel_size=load["tensor_parallel_size"],
            limit_mm_per_prompt={
                "image": 0,
                "video": {"count": load["max_views"], **load["profile_frame"]},
            },
            mm_processor_kwargs=VIDEO_KWARGS,
            mm_processor_cache_gb=0,  # every clip is seen once
            structured_outputs_config={"backend": "xgrammar"},
            **options,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.ends = {
            self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            self.tokenizer.pad_token_id,
            self.tokenizer.eos_token_id,
        }

    def describe(self) -> str:
        from vllm.platforms import current_platform

        config = self.llm.llm_engine.model_config
        lora = ", with its LoRA adapter" if self.lora else ""
        return (
            f"vLLM on {current_platform.device_type} ({str(config.dtype).removeprefix('torch.')})"
            f"{lora}, video {self.video}"
        )

    def prompt(self, request: dict) -> dict:
        from qwenvl.chat import chat_messages
        from qwenvl.video import prepare_clip

        text = self.tokenizer.apply_chat_template(
            chat_messages(request["human"]), add_generation_prompt=True, tokenize=False
        )
        videos = []
        for view, (frames, fps) in enumerate(request["views"]):
            video, metadata = prepare_clip(frames, fps, self.video.for_view(view))
            videos.append((video, asdict(metadata)))
        return {
            "prompt": text,
            "multi_modal_data": {"video": videos if len(videos) > 1 else videos[0]},
            "mm_processor_kwargs": VIDEO_KWARGS,
        }

    def answer(self, message: dict) -> list[dict]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = (
            StructuredOutputsParams(grammar=self.grammar) if message["constrained"] else None
        )
        params = SamplingParams(
            temperature=0.0, max_tokens=message["max_tokens"], structured_outputs=structured
        )
        prompts = [self.prompt(r) for r in message["requests"]]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        answers = []
        for output in outputs:
            ids = list(output.outputs[0].token_ids)
            length = next((i for i, t in enumerate(ids) if t in self.ends), len(ids))
            # The answer's own tokens, decoded as transformers decodes them (vLLM's incremental
            # detokenizer writes invalid UTF-8 byte tokens differently).
            text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
            answers.append(
                {"text": text, "prompt_ids": list(output.prompt_token_ids), "answer_tokens": length}
            )
        return answers


def serve(requests, replies) -> int:
    served = None
    while (message := read_message(requests)) is not None:
        try:
            if message["op"] == "load":
                served = Served(message)
                write_message(replies, {"describe": served.describe()})
            elif message["op"] == "answer":
                write_message(replies, {"answers": served.answer(message)})
            elif message["op"] == "close":
                break
        except Exception as err:  # sent back as the one line the user sees
            traceback.print_exc(file=sys.stderr)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            write_message(replies, {"error": f"{type(err).__name__}: {first}"})
    return 0


def main() -> int:
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything vLLM prints goes to stderr, never into the replies
    return serve(sys.stdin.buffer, replies)


if __name__ == "__main__":  # vLLM starts its engine with spawn: it re-imports this module
    sys.exit(main())
