"""On a CUDA machine (`make test-gpu`, which installs the GPU extras and fails where torch sees
no GPU): bf16 LoRA with task metrics, full training (plain, ZeRO-3 with an eval set, ZeRO-3
offload), QLoRA end to end with its layers really 4-bit, flash-attn really the kernel and
agreeing with sdpa on a training step, batched generation over prompts of different lengths,
evaluation on one GPU and over NCCL on two, merge against the adapter, and prediction.

A missing extra (flash-attn, bitsandbytes) fails these tests rather than skipping them: they are
what a GPU machine is for. Only the two-GPU test needs a second GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import assert_two_ranks_evaluate_as_one, free_port, run_script, script_main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL_VIDEO = {"VIDEO_MIN_PIXELS": str(32 * 32), "VIDEO_MAX_PIXELS": str(64 * 32 * 32)}


def test_the_gpu_extras_are_installed():
    """make test-gpu installs flash-attn and bitsandbytes; without them the GPU paths below
    would not run what users run."""
    from qwenvl.model import attention_choice

    assert importlib.util.find_spec("flash_attn"), "flash-attn missing: uv sync --extra gpu"
    assert importlib.util.find_spec("bitsandbytes"), "bitsandbytes missing: uv sync --extra quant"
    kernel, why = attention_choice(torch.device("cuda"), torch.bfloat16)
    assert kernel == "flash_attention_2", why
    assert attention_choice(torch.device("cuda"), torch.float32)[0] == "sdpa"


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


def _losses(out: Path, step: int = 4) -> list[float]:
    state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
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
    assert "attention flash_attention_2" in log and "device cuda" in log
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
    compute = json.loads((lora_dir / "compute.json").read_text())
    assert compute["mfu"] is not None and compute["device"].startswith("NVIDIA")
    assert compute["eval_seconds"] > 0 and compute["train_seconds"] < compute["wall_seconds"]


@pytest.mark.parametrize(
    "deepspeed", ["", "zero3.json", "zero3_offload.json"], ids=["plain", "zero3", "zero3_offload"]
)
def test_full_fine_tuning_trains_on_the_gpu(tiny_model_dir, training_dir, tmp_path, deepspeed):
    out = tmp_path / "full"
    evaluation = {"EVAL_DATASETS": training_dir / "val.json"} if deepspeed == "zero3.json" else {}
    log = _train(
        "./train_physical_ai.sh",
        tiny_model_dir,
        training_dir,
        out,
        LR="1e-4",
        DEEPSPEED_CONFIG=deepspeed,
        **evaluation,
    )
    assert "attention flash_attention_2" in log
    assert ("upcast to fp32" in log) == (not deepspeed)  # DeepSpeed keeps its own fp32 copy
    losses = _losses(out)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    compute = json.loads((out / "compute.json").read_text())
    assert compute["segments"][0]["steps"] == 4 and compute["tokens"] > 0
    if evaluation:
        state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
        assert any("eval_loss" in entry for entry in state["log_history"])
        assert compute["eval_seconds"] > 0


def test_flash_attn_and_sdpa_agree_on_a_training_step(tiny_model_dir, training_dir):
    """The same batch, the same bf16 weights: the label-only loss and its gradients under
    flash-attn and under sdpa agree within bf16's tolerance."""
    from transformers import AutoProcessor

    from qwenvl.data.collator import VideoCollator
    from qwenvl.data.dataset import SupervisedDataset
    from qwenvl.data.samples import load_samples
    from qwenvl.model import load_model
    from qwenvl.train.trainer import label_only_loss
    from qwenvl.video import VideoSettings

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    settings = VideoSettings(min_pixels=32 * 32, max_pixels=64 * 32 * 32)
    dataset = SupervisedDataset(
        load_samples([str(training_dir / "train.json")])[:2], processor, settings, 8192
    )
    batch = VideoCollator(processor.tokenizer.pad_token_id, pixel_dtype=torch.bfloat16)(
        [dataset[0], dataset[1]]
    )
    batch.pop("skipped_samples", None)
    results = {}
    for kernel in ("flash_attention_2", "sdpa"):
        model = load_model(str(tiny_model_dir), kernel, device=torch.device("cuda"))
        model.train()
        inputs = {k: v.to("cuda") if hasattr(v, "to") else v for k, v in batch.items()}
        loss, _ = label_only_loss(model, inputs)
        loss.backward()
        grad = model.model.language_model.layers[0].self_attn.q_proj.weight.grad.float()
        results[kernel] = (loss.item(), grad.clone())
    assert results["flash_attention_2"][0] == pytest.approx(results["sdpa"][0], rel=2e-2)
    torch.testing.assert_close(
        results["flash_attention_2"][1], results["sdpa"][1], atol=5e-2, rtol=5e-2
    )


def test_batched_generation_over_prompts_of_different_lengths_completes_each_answer(
    lora_dir, training_dir
):
    """Left padding on the GPU: a batch whose clips give prompts of different lengths answers
    each as that clip alone does, and each constrained answer is whole (30 pairs, ended)."""
    from qwenvl.answer import parse_pairs
    from qwenvl.data.samples import load_samples
    from qwenvl.inference.backend import Request
    from qwenvl.inference.spec import read_spec
    from qwenvl.inference.transformers_backend import TransformersBackend, answer_token_budget
    from qwenvl.video import decode_video

    backend = TransformersBackend.load(read_spec(str(lora_dir)))
    model = backend.model
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    assert model.get_base_model().config._attn_implementation == "flash_attention_2"
    samples = load_samples([str(training_dir / "test.json")])[:2]
    prompt = backend.spec.user_prompt().user_text()
    clips = [decode_video(s["video"], backend.spec.video) for s in samples]
    clips.append((clips[0][0][:, :, :64], clips[0][1]))  # narrower: a shorter prompt
    requests = [Request.single(frames, fps, prompt) for frames, fps in clips]
    batched = backend.answer(requests)
    single = [backend.answer([r])[0] for r in requests]
    assert len({a.prompt_tokens for a in batched}) > 1
    assert [a.text for a in batched] == [a.text for a in single]
    budget = answer_token_budget(backend.processor.tokenizer, backend.spec.answer_format, True)
    for answer in batched:
        assert len(parse_pairs(answer.text)) == 30 and answer.answer_tokens < budget


def test_evaluate_merge_and_predict_run_on_the_gpu(lora_dir, training_dir, tmp_path, capsys):
    argv = ["--model-path", str(lora_dir), "--test-json", str(training_dir / "test.json"),
            "--max-samples", "4", "--output-dir", str(tmp_path / "eval")]  # fmt: skip
    assert script_main("evaluate")(argv) == 0
    assert "on cuda:0" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["parse"]["total"] == 4
    merged = tmp_path / "merged"
    argv = ["--adapter-path", str(lora_dir), "--output-dir", str(merged), "--save-dtype",
            "fp32", "--check-json", str(training_dir / "test.json")]  # fmt: skip
    assert script_main("merge_lora")(argv) == 0
    assert "on cuda:0" in capsys.readouterr().out
    report = json.loads((merged / "merge_report.json").read_text())
    # Merged in fp32 on the GPU and saved in fp32: the merged model is the adapter.
    assert report["update_kept_share"] > 0.999
    assert report["logits"]["share_of_the_fine_tune"] < 0.01
    clip = json.loads((training_dir / "test.json").read_text())[0]["video"]
    argv = ["--model-path", str(merged), "--json", str(training_dir / clip)]
    script_main("predict")(argv)
    printed = capsys.readouterr()
    assert "on cuda:0" in printed.err and "Traceback" not in printed.err
    record = json.loads(printed.out.strip().splitlines()[-1])
    assert record["raw_text"] is not None
    script_main("predict")([*argv, "--device", "cpu"])
    assert "on cpu" in capsys.readouterr().err


def test_flash_attention_is_the_kernel_that_runs(tiny_model_dir, training_dir, monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from qwenvl.data.samples import load_samples
    from qwenvl.inference.backend import Request
    from qwenvl.inference.spec import read_spec
    from qwenvl.inference.transformers_backend import TransformersBackend
    from qwenvl.video import decode_video

    calls = []
    flash = ALL_ATTENTION_FUNCTIONS["flash_attention_2"]

    def counted(*args, **kwargs):
        calls.append(1)
        return flash(*args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", counted)
    backend = TransformersBackend.load(read_spec(str(tiny_model_dir)))
    assert backend.model.config._attn_implementation == "flash_attention_2"
    sample = load_samples([str(training_dir / "test.json")])[0]
    clip = decode_video(sample["video"], backend.spec.video)
    with torch.inference_mode():
        backend.model(
            **backend.inputs([Request.single(*clip, backend.spec.user_prompt().user_text())])
        )
    assert calls  # the attention layers went through flash-attn


def test_qlora_trains_4bit_layers_evaluates_quantized_and_merges(
    tiny_model_dir, training_dir, tmp_path, capsys
):
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoConfig

    from qwenvl.inference.spec import read_spec
    from qwenvl.inference.transformers_backend import TransformersBackend
    from qwenvl.standins.architectures import parameter_count

    out = tmp_path / "qlora"
    log = _train("./train_physical_ai_lora.sh", tiny_model_dir, training_dir, out, QUANT="4bit")
    assert "language model in 4-bit NF4" in log
    assert json.loads((out / "tuning.json").read_text())["quantization"] == "4bit"
    # A 4-bit weight counts at its full size: all parameters equal the unquantized model's.
    compute = json.loads((out / "compute.json").read_text())
    assert compute["parameters"] >= parameter_count(AutoConfig.from_pretrained(tiny_model_dir))
    # The adapter really runs on 4-bit layers: every linear layer of the language model.
    model = TransformersBackend.load(read_spec(str(out))).model
    quantized = [n for n, m in model.named_modules() if isinstance(m, Linear4bit)]
    language = [n for n in quantized if ".language_model." in n]
    layers = AutoConfig.from_pretrained(tiny_model_dir).text_config.num_hidden_layers
    assert len(language) == 7 * layers and not [n for n in quantized if ".visual." in n]
    argv = ["--model-path", str(out), "--test-json", str(training_dir / "test.json"),
            "--max-samples", "2", "--output-dir", str(tmp_path / "eval")]  # fmt: skip
    assert script_main("evaluate")(argv) == 0
    assert "on cuda:0" in capsys.readouterr().out
    argv = ["--adapter-path", str(out), "--output-dir", str(tmp_path / "m")]
    assert script_main("merge_lora")(argv) == 0
    assert "merged into the base's original full-precision weights" in capsys.readouterr().out
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_evaluation_on_two_gpus_over_nccl_equals_one(tiny_model_dir, training_dir, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    test_json = training_dir / "test.json"
    assert_two_ranks_evaluate_as_one(tiny_model_dir, test_json, tmp_path, SMALL_VIDEO)
