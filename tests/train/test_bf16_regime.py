"""The GPU's dtype regime on the CPU (PRECISION=bf16, --dtype bf16): frozen weights in bf16,
trained ones in fp32, accelerate's bf16 mixed precision, generation inside the trainer (task
metrics) and outside it (evaluation, prediction, merge). fp32 runs hide what breaks here.

The LoRA run also trains on a train.json with three bad samples among good ones: each is named
and left out (or skipped while training), and the rest trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import captured_log, launcher_env, run_script, script_main, train_in_process
from safetensors.torch import load_file

BF16 = {"PRECISION": "bf16", "MAX_STEPS": 4, "SAVE_STEPS": 2, "BATCH_SIZE": 2}


@pytest.fixture(scope="module")
def bf16_lora(tiny_model_dir, training_dir, dirty_training, tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "lora"
    env = launcher_env(
        tiny_model_dir,
        dirty_training / "train.json",
        out,
        EVAL_DATASETS=training_dir / "val.json",
        EVAL_GENERATE_SAMPLES=2,
        **BF16,
    )
    with captured_log() as log:
        train_in_process("lora", env, "--max_bad_samples", "0.5")
    return out, log.getvalue()


def test_lora_in_bf16_logs_task_metrics_from_generation_in_the_trainer(bf16_lora):
    out, log = bf16_lora
    assert "dtype torch.bfloat16" in log and "upcast to fp32" in log
    assert "video pixels cross the DataLoader in torch.bfloat16" in log
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    logged = {key for entry in state["log_history"] for key in entry}
    assert {"eval_loss", "eval_ade", "eval_fde", "eval_speed_mae"} <= logged


def test_bad_samples_are_named_left_out_and_the_rest_trains(bf16_lora):
    out, log = bf16_lora
    report = json.loads((out / "skipped_samples.json").read_text())
    assert report["left_out_at_start"] == {
        "29-pairs": "answer: 29 pairs, expected 30",
        "negative-fps": "fps -30.0 is not positive",
    }
    assert report["skipped_while_training"] == {
        "half-decodable": "video decodes 15 of the 30 frames it claims"
    }
    assert "left out sample 29-pairs" in log and "skipping sample half-decodable" in log
    assert (out / "adapter_model.safetensors").is_file()  # the good samples trained


def test_too_many_bad_samples_stop_the_run_in_one_line(
    tiny_model_dir, dirty_training, tmp_path, capsys
):
    env = launcher_env(tiny_model_dir, dirty_training / "train.json", tmp_path / "out", **BF16)
    capsys.readouterr()
    assert train_in_process("lora", env, check=False) == 2  # no exception: one line
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "more than --max_bad_samples 0.05 allows" in last


def test_full_fine_tune_in_bf16_saves_bf16_weights_and_fp32_masters(
    tiny_model_dir, four_samples, tmp_path
):
    out = tmp_path / "full"
    env = launcher_env(tiny_model_dir, four_samples, out, DEEPSPEED_CONFIG="", **BF16)
    train_in_process("full", env)
    for folder in (out, out / "checkpoint-4"):
        weights = load_file(folder / "model.safetensors")
        assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}
    masters = load_file(out / "checkpoint-4" / "fp32_masters.safetensors")
    assert masters and {tensor.dtype for tensor in masters.values()} == {torch.float32}
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(out, dtype=torch.bfloat16)
    trained = model.state_dict()["model.language_model.layers.0.self_attn.q_proj.weight"]
    master = masters["model.language_model.layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(trained, master.bfloat16(), atol=0, rtol=0)


def test_evaluation_prediction_and_merge_in_bf16(bf16_lora, training_dir, tmp_path, capsys):
    out, _ = bf16_lora
    # A test set with one video gone and one sample without its observed labels: the rest is
    # still scored, and the two are named and counted.
    samples = json.loads((training_dir / "test.json").read_text())[:4]
    for sample in samples:
        sample["video"] = str(training_dir / sample["video"])
    samples[1]["video"] = str(tmp_path / "gone" / "gone.mp4")
    del samples[2]["observed_speed"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.json").write_text(json.dumps(samples))
    evaluation = tmp_path / "eval"
    argv = ["--model-path", str(out), "--test-json", str(tmp_path / "data" / "test.json")]
    assert script_main("evaluate")([*argv, "--dtype", "bf16", "--output-dir", str(evaluation)]) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["parse"]["total"] == 2 and metrics["model"]["all"]["n"] == 2
    assert metrics["unscored"] == {
        "count": 2,
        "samples": {
            samples[1]["id"]: "video not found",
            samples[2]["id"]: "no 30 values of observed_speed",
        },
    }
    assert "2 test samples could not be answered" in (evaluation / "report.md").read_text()
    merged = tmp_path / "merged"
    argv = ["--adapter-path", str(out), "--output-dir", str(merged), "--save-dtype", "bf16",
            "--check-json", str(training_dir / "test.json"), "--check-samples", "1"]  # fmt: skip
    assert script_main("merge_lora")(argv) == 0
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["saved_dtype"] == "bf16" and report["logits"]["positions"] > 0
    assert f"keep {100 * report['update_kept_share']:.1f}% of the update" in capsys.readouterr().out
    argv = ["--model-path", str(merged), "--dtype", "bf16", "--json", samples[0]["video"]]
    assert script_main("predict")(argv) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["error"] is None and len(answer["pairs"]) == 30


def test_evaluations_of_different_test_sets_are_not_compared(
    tiny_model_dir, training_dir, tmp_path
):
    for name, count in (("two", "2"), ("three", "3")):
        argv = ["--model-path", str(tiny_model_dir), "--test-json", str(training_dir / "test.json")]
        argv += [
            "--max-samples",
            count,
            "--max-new-tokens",
            "8",
            "--output-dir",
            str(tmp_path / name),
        ]
        assert script_main("evaluate")(argv) == 0
    result = run_script(
        "scripts/compare_evaluations.py", f"a={tmp_path / 'two'}", f"b={tmp_path / 'three'}",
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: evaluations of different test sets")


def test_a_qlora_adapter_runs_on_its_4bit_base_and_merges_into_its_full_precision_base(
    bf16_lora, training_dir, tmp_path, capsys
):
    adapter = tmp_path / "qlora"
    shutil.copytree(bf16_lora[0], adapter)
    tuning = json.loads((adapter / "tuning.json").read_text())
    (adapter / "tuning.json").write_text(json.dumps({**tuning, "quantization": "4bit"}))
    argv = ["--model-path", str(adapter), "--test-json", str(training_dir / "test.json")]
    assert script_main("evaluate")([*argv, "--output-dir", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a QLoRA adapter, trained on a 4bit base, runs on that base" in error
    assert "CUDA" in error and not (tmp_path / "eval").exists()
    argv = ["--adapter-path", str(adapter), "--output-dir", str(tmp_path / "merged")]
    assert script_main("merge_lora")(argv) == 0
    assert "merged into the base's original full-precision weights" in capsys.readouterr().out
    assert Path(tmp_path / "merged" / "model.safetensors").is_file()
