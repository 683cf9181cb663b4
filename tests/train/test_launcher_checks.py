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
        ("VIDEO_FPS", "-30", "error: VIDEO_FPS=-30: must be positive"),
        ("MODEL_PATH", "./no/such/model", "error: MODEL_PATH=./no/such/model: no such folder"),
        ("TUNE_MM_LLM", "maybe", "error: TUNE_MM_LLM=maybe: expected one of 1, true"),
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
    env = {**base_env}
    assert preflight({**env, "NPROC_PER_NODE": "2"}, "lora")["OMP_NUM_THREADS"] == max(
        1, cores // 2
    )
    assert preflight({**env, "OMP_NUM_THREADS": "3"}, "lora")["OMP_NUM_THREADS"] == 3
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


def test_several_nodes_on_the_loopback_address_are_warned_of(base_env, capsys):
    from qwenvl.train.preflight import preflight

    values = preflight({**base_env, "NNODES": "2", "NODE_RANK": "1"}, "lora")
    assert values["MASTER_PORT"] == int(base_env["MASTER_PORT"])
    assert "NNODES=2 with MASTER_ADDR=127.0.0.1: the other nodes would wait on their own " in (
        capsys.readouterr().err
    )
    unset = {k: v for k, v in base_env.items() if k != "MASTER_PORT"}
    assert preflight({**unset, "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5"},
                     "lora")["MASTER_PORT"] == 29500  # fmt: skip
    assert "warning" not in capsys.readouterr().err


def test_a_port_a_run_just_left_is_taken_one_a_live_process_holds_is_not(base_env):
    """The check binds as torchrun does (SO_REUSEADDR): sockets of a dead run in TIME_WAIT do
    not block it; a listening process does."""
    from qwenvl.train.config import SettingError
    from qwenvl.train.preflight import preflight

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    preflight({**base_env, "MASTER_PORT": str(port)}, "lora")  # free again at once
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        held = busy.getsockname()[1]
        with pytest.raises(SettingError, match=f"MASTER_PORT={held}: already in use"):
            preflight({**base_env, "MASTER_PORT": str(held)}, "lora")
