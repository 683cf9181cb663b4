"""On a CUDA machine (`make test-gpu`, which fails where torch sees no GPU): bf16 LoRA with task
metrics, full training (plain, ZeRO-3, ZeRO-3 offload), QLoRA end to end, flash-attn really
being the kernel, evaluation on one GPU and over NCCL on two, merge and prediction."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import assert_two_ranks_evaluate_as_one, free_port, run_script

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ATTENTION = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
SMALL_VIDEO = {"VIDEO_MIN_PIXELS": str(32 * 32), "VIDEO_MAX_PIXELS": str(64 * 32 * 32)}


def _train(launcher: str, model: Path, data: Path, out: Path, **extra) -> str:
    env = {
        "MODEL_PATH": str(model),
        "DATASETS": str(data / "train.json"),
        "OUTPUT_DIR": str(out),
        "NPROC_PER_NODE": "1",
        "MASTER_PORT": str(free_port()),
        "MAX_STEPS": "4",
        "SAVE_STEPS": "4",
        "BATCH_SIZE": "2",
        "GRAD_ACCUM": "1",
        "LOGGING_STEPS": "1",
        "DATALOADER_WORKERS": "2",
        **SMALL_VIDEO,
        **{k: str(v) for k, v in extra.items()},
    }
    result = run_script(launcher, env=env)
    return result.stdout + result.stderr


def _losses(out: Path) -> list[float]:
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, training_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu_lora") / "adapter"
    log = _train(
        "./train_physical_ai_lora.sh",
        tiny_model_dir,
        training_dir,
        out,
        LR="1e-3",
        EVAL_DATASETS=training_dir / "val.json",
        EVAL_GENERATE_SAMPLES=2,
        SAVE_STEPS=2,
    )
    assert f"attention {ATTENTION}" in log and "device cuda" in log
    assert "upcast to fp32" in log  # the projector trains in full: fp32 master weights
    assert "video pixels cross the DataLoader in torch.bfloat16" in log
    return out


def test_lora_trains_in_bf16_on_the_gpu_with_task_metrics(lora_dir):
    losses = _losses(lora_dir)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert (lora_dir / "adapter_model.safetensors").is_file()
    state = json.loads((lora_dir / "checkpoint-4" / "trainer_state.json").read_text())
    logged = {key for entry in state["log_history"] for key in entry}
    assert {"eval_loss", "eval_ade", "eval_fde"} <= logged  # generation under the autocast


@pytest.mark.parametrize(
    "deepspeed", ["", "zero3.json", "zero3_offload.json"], ids=["plain", "zero3", "zero3_offload"]
)
def test_full_fine_tuning_trains_on_the_gpu(tiny_model_dir, training_dir, tmp_path, deepspeed):
    out = tmp_path / "full"
    log = _train(
        "./train_physical_ai.sh",
        tiny_model_dir,
        training_dir,
        out,
        LR="1e-4",
        DEEPSPEED_CONFIG=deepspeed,
    )
    assert f"attention {ATTENTION}" in log
    assert ("upcast to fp32" in log) == (not deepspeed)  # DeepSpeed keeps its own fp32 copy
    losses = _losses(out)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}  # the compute dtype


def test_inference_model_is_on_the_gpu_in_bf16(lora_dir, training_dir):
    from qwenvl.data.samples import load_samples
    from qwenvl.inference.generate import generate_answers
    from qwenvl.inference.load import load_for_inference
    from qwenvl.video import decode_video

    loaded = load_for_inference(str(lora_dir))
    assert loaded.model.device.type == "cuda" and loaded.model.dtype == torch.bfloat16
    assert loaded.model.get_base_model().config._attn_implementation == ATTENTION
    samples = load_samples([str(training_dir / "test.json")])[:3]
    clips = [decode_video(s["video"], loaded.settings) for s in samples]
    prompt = loaded.user_prompt().user_text()
    texts = generate_answers(loaded, clips, [prompt] * len(clips), max_new_tokens=16)
    assert len(texts) == 3


def test_evaluate_merge_and_predict_run_on_the_gpu(lora_dir, training_dir, tmp_path):
    evaluated = run_script(
        "scripts/evaluate.py",
        "--model-path",
        str(lora_dir),
        "--test-json",
        str(training_dir / "test.json"),
        "--max-samples",
        "4",
        "--output-dir",
        str(tmp_path / "eval"),
    )
    assert "on cuda:0" in evaluated.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["parse"]["total"] == 4
    merged = tmp_path / "merged"
    log = run_script(
        "scripts/merge_lora.py", "--adapter-path", str(lora_dir), "--output-dir", str(merged)
    )
    assert "on cuda:0" in log.stdout and (merged / "config.json").is_file()
    clip = json.loads((training_dir / "test.json").read_text())[0]["video"]
    predicted = run_script(
        "scripts/predict.py",
        "--model-path",
        str(merged),
        "--json",
        str(training_dir / clip),
        check=False,
    )
    assert "on cuda:0" in predicted.stderr and "Traceback" not in predicted.stderr
    record = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert record["raw_text"] is not None  # decoded and answered (parsing is the model's skill)
    on_cpu = run_script(
        "scripts/predict.py",
        "--model-path",
        str(merged),
        "--device",
        "cpu",
        str(training_dir / clip),
        check=False,
    )
    assert "on cpu" in on_cpu.stderr


def test_flash_attention_is_the_kernel_that_runs(tiny_model_dir, training_dir, monkeypatch):
    if ATTENTION != "flash_attention_2":
        pytest.skip("flash-attn is not installed here (uv sync --extra gpu)")
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from qwenvl.chat import PromptSettings
    from qwenvl.data.samples import load_samples
    from qwenvl.inference.generate import build_inputs
    from qwenvl.inference.load import load_for_inference
    from qwenvl.video import decode_video

    calls = []
    flash = ALL_ATTENTION_FUNCTIONS["flash_attention_2"]

    def counted(*args, **kwargs):
        calls.append(1)
        return flash(*args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", counted)
    loaded = load_for_inference(str(tiny_model_dir))
    assert loaded.model.config._attn_implementation == "flash_attention_2"
    sample = load_samples([str(training_dir / "test.json")])[0]
    clip = decode_video(sample["video"], loaded.settings)
    with torch.inference_mode():
        loaded.model(**build_inputs(loaded, [clip], [PromptSettings().user_text()]))
    assert calls  # the attention layers went through flash-attn


def test_qlora_trains_evaluates_quantized_and_merges(tiny_model_dir, training_dir, tmp_path):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed here (uv sync --extra quant)")
    from transformers import AutoConfig

    from qwenvl.standins.architectures import parameter_count

    out = tmp_path / "qlora"
    log = _train("./train_physical_ai_lora.sh", tiny_model_dir, training_dir, out, QUANT="4bit")
    assert "language model in 4-bit NF4" in log
    assert json.loads((out / "tuning.json").read_text())["quantization"] == "4bit"
    # A 4-bit weight counts at its full size: all parameters equal the unquantized model's.
    compute = json.loads((out / "compute.json").read_text())
    base = parameter_count(AutoConfig.from_pretrained(tiny_model_dir))
    assert compute["parameters"] >= base
    evaluated = run_script(
        "scripts/evaluate.py", "--model-path", str(out), "--test-json",
        str(training_dir / "test.json"), "--max-samples", "2",
        "--output-dir", str(tmp_path / "eval"),
    )  # fmt: skip
    assert "on cuda:0" in evaluated.stdout
    merged = run_script(
        "scripts/merge_lora.py", "--adapter-path", str(out), "--output-dir", str(tmp_path / "m")
    )
    assert "merged into the bf16 base (dequantized)" in merged.stdout
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_evaluation_on_two_gpus_over_nccl_equals_one(tiny_model_dir, training_dir, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    test_json = training_dir / "test.json"
    assert_two_ranks_evaluate_as_one(tiny_model_dir, test_json, tmp_path, SMALL_VIDEO)
