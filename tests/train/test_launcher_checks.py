"""The launchers' settings are checked before torchrun starts: a bad one is one line naming the
variable and exit status 2, with no torchrun traceback after it."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from conftest import ROOT, free_port, run_script

LORA = str(ROOT / "train_physical_ai_lora.sh")
# The launchers' own settings, as the pre-flight gets them from the LoRA launcher.
LORA_ENV = dict(
    EPOCHS=5, BATCH_SIZE=4, GRAD_ACCUM=2, LR="2e-4", SAVE_STEPS=100, SAVE_TOTAL_LIMIT=3,
    LOGGING_STEPS=1, MODEL_MAX_LENGTH=8192, DATALOADER_WORKERS=4, EVAL_GENERATE_SAMPLES=0,
    SEED=42, MAX_STEPS=-1, NNODES=1, NODE_RANK=0, MASTER_ADDR="127.0.0.1",
    TUNE_MM_VISION="False", TUNE_MM_MLP="True", TUNE_MM_LLM="True", RESUME="1",
)  # fmt: skip
FULL = str(ROOT / "train_physical_ai.sh")


def _launch(launcher: str, env: dict, cwd: Path | None = None):
    result = run_script(launcher, env=env, check=False, cwd=cwd)
    return result, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


@pytest.fixture
def base_env(tiny_model_dir, training_dir, tmp_path) -> dict:
    return {
        "MODEL_PATH": str(tiny_model_dir),
        "DATASETS": str(training_dir / "train.json"),
        "OUTPUT_DIR": str(tmp_path / "out"),
        "MASTER_PORT": str(free_port()),
    }


@pytest.mark.parametrize(
    "setting, value, expected",
    [
        ("DATASETS", "nope", "error: DATASETS: unknown dataset 'nope'"),
        ("LR", "abc", "error: LR=abc: not a number"),
        ("BATCH_SIZE", "0", "error: BATCH_SIZE=0: must be at least 1"),
        ("GRAD_ACCUM", "two", "error: GRAD_ACCUM=two: not an integer"),
        ("EPOCHS", "0", "error: EPOCHS=0: nothing would train"),
        ("MAX_STEPS", "0", "error: MAX_STEPS=0: nothing would train"),
        ("VIDEO_FPS", "-30", "error: VIDEO_FPS must be positive"),
        ("MODEL_PATH", "./no/such/model", "error: MODEL_PATH=./no/such/model: no such folder"),
        ("TUNE_MM_LLM", "maybe", "error: TUNE_MM_LLM=maybe: expected True or False"),
    ],
)
def test_a_bad_setting_is_one_line_before_torchrun(base_env, setting, value, expected):
    result, last = _launch(LORA, {**base_env, setting: value})
    assert result.returncode == 2 and last.startswith(expected), result.stderr
    assert "torch.distributed" not in result.stderr and "Traceback" not in result.stderr
    assert "== resolved settings ==" not in result.stdout  # it never got that far


def test_an_output_dir_that_is_a_file_and_a_busy_port_are_named(base_env, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result, last = _launch(FULL, {**base_env, "OUTPUT_DIR": str(tmp_path / "file")})
    assert (
        result.returncode == 2
        and last == f"error: OUTPUT_DIR={tmp_path / 'file'}: is a file, not a folder"
    )
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result, last = _launch(LORA, {**base_env, "MASTER_PORT": str(port)})
    assert result.returncode == 2 and last.startswith(f"error: MASTER_PORT={port}: already in use")


def test_resuming_with_other_lora_settings_says_which_and_what_to_do(base_env, lora_run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(lora_run, out)
    result, last = _launch(LORA, {**base_env, "OUTPUT_DIR": str(out), "LORA_R": "16"})
    assert result.returncode == 2 and "LORA_R=64 (now 16)" in last
    assert "RESUME=0 or another OUTPUT_DIR" in last and "size mismatch" not in result.stderr
    result, last = _launch(FULL, {**base_env, "OUTPUT_DIR": str(out)})
    assert result.returncode == 2 and "LoRA fine-tuning (now full fine-tuning)" in last


def test_a_user_error_inside_training_ends_the_launcher_with_its_line(base_env):
    result, last = _launch(LORA, {**base_env, "MODEL_MAX_LENGTH": "10", "NPROC_PER_NODE": "2"})
    assert result.returncode == 2, result.stderr
    assert last.endswith("train.json: no training sample fits model_max_length")
    assert "ChildFailedError" not in result.stderr and "Traceback" not in result.stderr
    assert "failed (exitcode" not in result.stderr


def test_cpu_threads_per_rank_and_a_gpu_torch_cannot_use(base_env, tmp_path):
    from qwenvl.train.preflight import preflight

    cores = os.cpu_count() or 1
    env = {**base_env, **{k: str(v) for k, v in LORA_ENV.items()}}
    assert preflight({**env, "NPROC_PER_NODE": "2"}, "lora")["OMP_NUM_THREADS"] == str(
        max(1, cores // 2)
    )
    assert "OMP_NUM_THREADS" not in preflight({**env, "OMP_NUM_THREADS": "3"}, "lora")
    # nvidia-smi lists a GPU that this torch cannot use (the driver is older than its CUDA).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 535.104.05\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    result, last = _launch(LORA, {**base_env, "PATH": path})
    if torch.cuda.is_available():
        return  # this machine's torch does see its GPU
    assert result.returncode == 2 and "nvidia-smi lists 1 GPU(s) with driver 535.104.05" in last
    assert f"built for CUDA {torch.version.cuda}" in last and "rather than train on the CPU" in last
