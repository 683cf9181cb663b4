"""Training speed and cost: logits only where there are labels, the compute report, QLoRA's
guard, and the real-sized architectures the GPU benchmark builds."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_main
from transformers import AutoProcessor

from qwenvl.data.collator import VideoCollator
from qwenvl.data.dataset import SupervisedDataset
from qwenvl.data.samples import load_samples
from qwenvl.model import load_model
from qwenvl.standins.architectures import PUBLISHED_PARAMETERS, parameter_count, published_config
from qwenvl.train.compute import peak_tflops
from qwenvl.train.config import LoraSettings, TuneFlags
from qwenvl.train.setup import parameter_counts, setup_training
from qwenvl.train.trainer import label_only_loss
from qwenvl.video import VideoSettings


def _padded_batch(tiny_model_dir, training_dir) -> dict:
    """Two samples of different lengths, so the batch holds right padding."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    settings = VideoSettings(min_pixels=32 * 32, max_pixels=16 * 32 * 32)
    samples = load_samples([str(training_dir / "train.json")])
    dataset = SupervisedDataset(samples, processor, settings, 8192)
    first, second = dataset[0], dict(dataset[1])
    vision_end = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    after_video = int((second["input_ids"] == vision_end).nonzero().max()) + 1
    keep = torch.ones(len(second["input_ids"]), dtype=torch.bool)
    keep[after_video : after_video + 5] = False  # five prompt tokens fewer
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "labels"):
        second[key] = second[key][keep]
    batch = VideoCollator(processor.tokenizer.pad_token_id)([first, second])
    assert (batch["attention_mask"] == 0).any()
    return batch


@pytest.mark.parametrize("lora", [LoraSettings(r=4, alpha=8), None], ids=["lora", "full"])
def test_label_only_logits_give_the_same_loss_and_gradients(tiny_model_dir, training_dir, lora):
    model = load_model(str(tiny_model_dir))
    model = setup_training(model, TuneFlags(False, True, True), lora, deepspeed=False)
    model.eval()  # no dropout: both paths see the same network
    batch = _padded_batch(tiny_model_dir, training_dir)
    trained = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(compute):
        model.zero_grad(set_to_none=True)
        loss = compute()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trained]

    full, full_grads = loss_and_grads(lambda: model(**batch).loss)
    ours, our_grads = loss_and_grads(lambda: label_only_loss(model, batch)[0])
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=0)
    for got, expected in zip(our_grads, full_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    # With the Trainer's count of labelled tokens over gradient accumulation.
    items = int((batch["labels"] != -100).sum()) * 3
    summed = model(**batch, num_items_in_batch=items).loss
    torch.testing.assert_close(label_only_loss(model, batch, items)[0], summed, atol=1e-6, rtol=0)


def test_qlora_on_a_machine_without_cuda_is_one_line(
    tiny_model_dir, training_dir, tmp_path, monkeypatch, capsys
):
    from qwenvl.train import launch

    env = {
        "MODEL_PATH": str(tiny_model_dir), "DATASETS": str(training_dir / "train.json"),
        "OUTPUT_DIR": str(tmp_path / "q"), "QUANT": "4bit", "MAX_STEPS": "1",
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launch.main(["lora"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "error: QUANT=4bit needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run here"
    )
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_real_sized_configs_have_the_published_parameter_counts(name):
    config = published_config(name)
    assert parameter_count(config) == pytest.approx(PUBLISHED_PARAMETERS[name], rel=0.01)
    assert config.text_config.vocab_size == 151936 and config.vision_config.patch_size == 16


def test_benchmark_builds_a_real_sized_config_without_a_gpu(tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    run_main("benchmark", "train", "--model-config", "4b", "--work-dir", tmp_path / "work",
             "--json", out, "--device", "cpu", "--model-path", tiny_model_dir)  # fmt: skip
    train = json.loads(out.read_text())["train"]
    assert train["model_config"] == "4b"
    assert train["parameters"] == pytest.approx(4.44e9, rel=0.01) and "CUDA" in train["note"]


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA H20", None),  # not an H200
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_tflops_by_exact_product_name(name, peak):
    assert peak_tflops(name, None) == peak
    assert peak_tflops(name, "123.5") == 123.5  # PEAK_TFLOPS wins


def test_a_4bit_weight_counts_at_its_full_size():
    class Params4bit(torch.nn.Parameter):
        """What bitsandbytes keeps: two 4-bit weights a byte, the real shape in quant_state."""

    packed = Params4bit(torch.zeros(64 * 32 // 2, 1, dtype=torch.uint8), requires_grad=False)
    packed.quant_state = type("QuantState", (), {"shape": torch.Size([64, 32])})()
    model = torch.nn.Module()
    model.weight = packed
    model.lora = torch.nn.Parameter(torch.zeros(8, 32))
    assert parameter_counts(model) == (64 * 32 + 8 * 32, 8 * 32)


def test_the_training_benchmark_runs_the_label_only_loss_one_configuration_at_a_time(
    tiny_model_dir, training_dir, monkeypatch
):
    import weakref

    import qwenvl.train.setup
    import qwenvl.train.trainer
    from qwenvl.bench import training as benchmark

    losses, models = [], []
    real_loss, real_setup = label_only_loss, qwenvl.train.setup.setup_training

    def counted_loss(*args, **kwargs):
        losses.append(1)
        return real_loss(*args, **kwargs)

    def tracked_setup(*args, **kwargs):
        assert all(ref() is None for ref in models)  # the previous configuration is freed
        model = real_setup(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(qwenvl.train.trainer, "label_only_loss", counted_loss)
    monkeypatch.setattr(qwenvl.train.setup, "setup_training", tracked_setup)
    small = VideoSettings(min_pixels=32 * 32, max_pixels=16 * 32 * 32)
    result = benchmark.bench_train(
        str(tiny_model_dir), training_dir / "train.json", 1, "cpu", steps=1, settings=small
    )
    assert len(models) == 3 and losses  # lora, lora without input casting, full
    assert all(result[mode]["s_per_step"] > 0 for mode in ("lora", "full"))


def test_the_loss_builds_no_kv_cache_in_evaluation(tiny_model_dir, training_dir):
    model = load_model(str(tiny_model_dir))
    model = setup_training(model, TuneFlags(False, True, True), None, deepspeed=False).eval()
    batch = _padded_batch(tiny_model_dir, training_dir)
    with torch.no_grad():
        _, outputs = label_only_loss(model, batch)
    assert model.config.text_config.use_cache and outputs.past_key_values is None


def test_compute_report_adds_up_the_segments_of_a_run_resumed_on_other_gpus():
    """10 h on 8 GPUs, then a resume for 1 h on 4 (30 min of it evaluating): 84 device-hours,
    not the 44 the last world size times the whole wall would give; MFU over training time
    only, each segment on its own GPUs."""
    from qwenvl.train.compute import build_report, earlier_segments

    hour = 3600.0
    first = {"processes": 8, "device": "NVIDIA H200", "global_batch": 64, "wall_seconds": 10 * hour,
             "train_seconds": 10 * hour, "eval_seconds": 0.0, "steps": 1000, "samples": 64_000,
             "tokens": 256_000_000}  # fmt: skip
    second = {**first, "processes": 4, "wall_seconds": hour, "train_seconds": hour / 2,
              "eval_seconds": hour / 2, "steps": 50, "samples": 3_200,
              "tokens": 12_800_000}  # fmt: skip
    report = build_report([first, second], (4_000_000_000, 100_000_000), 989.0, [10.0] * 4)
    assert report["device_hours"] == pytest.approx(84.0)
    assert report["wall_seconds"] == 11 * hour and report["train_seconds"] == 10.5 * hour
    assert report["steps"] == 1050 and report["samples"] == 67_200
    flops = 268_800_000 * (4 * 4e9 + 2 * 1e8)
    assert report["estimated_flops"] == flops
    assert report["mfu"] == pytest.approx(flops / ((10 * hour * 8 + hour / 2 * 4) * 989e12))
    assert report["samples_per_second"] == pytest.approx(67_200 / (10.5 * hour))
    assert report["runs"] == 2 and report["processes"] == 4
    # A report of an earlier version (totals only) becomes one segment of its processes.
    old = {"wall_seconds": 100.0, "processes": 2, "steps": 10, "samples": 40, "tokens": 4000,
           "device": "cpu"}  # fmt: skip
    assert earlier_segments(old) == [
        {"processes": 2, "device": "cpu", "global_batch": 4, "wall_seconds": 100.0,
         "train_seconds": 100.0, "steps": 10, "samples": 40, "tokens": 4000}
    ]  # fmt: skip
