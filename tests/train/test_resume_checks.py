"""A resume trains what its checkpoint trained: every stored setting, the data by content, the
prompt, the global batch across another number of processes, and a ZeRO checkpoint of another
world size through DeepSpeed's universal form. A live run holds a lock on its OUTPUT_DIR. All
checked before torchrun starts, in one line each."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LORA_RUN, SMALL_VIDEO

from qwenvl.chat import PromptSettings
from qwenvl.cli import UserError
from qwenvl.train import launch
from qwenvl.train.config import SettingError
from qwenvl.train.lock import LOCK_FILE, locked
from qwenvl.train.preflight import preflight


@pytest.fixture
def resumable(lora_run, four_samples, tiny_model_dir, tmp_path) -> dict:
    """A copy of the shared LoRA run, and the launcher settings it was trained with."""
    out = tmp_path / "run"
    shutil.copytree(lora_run, out)
    env = {
        "MODEL_PATH": str(tiny_model_dir),
        "DATASETS": str(four_samples),
        "OUTPUT_DIR": str(out),
        "GRAD_ACCUM": "1",
        **SMALL_VIDEO,
        **{k: str(v) for k, v in LORA_RUN.items()},
    }
    return env


def _refused(env: dict) -> str:
    with pytest.raises(SettingError) as caught:
        preflight(env, "lora")
    return str(caught.value)


def test_the_same_settings_resume(resumable):
    values = preflight(resumable, "lora")
    assert values["GRAD_ACCUM"] == 1 and values["LR"] == float(LORA_RUN["LR"])


@pytest.mark.parametrize(
    "change, named",
    [
        ({"VIDEO_FPS": "10"}, "VIDEO_FPS=30 (now 10)"),
        ({"VIDEO_MAX_PIXELS": str(8 * 32 * 32)}, "VIDEO_MAX_PIXELS=16384 (now 8192)"),
        ({"LR": "1e-3"}, "LR=0.005 (now 0.001)"),
        ({"WARMUP_RATIO": "0.1"}, "WARMUP_RATIO=0.03 (now 0.1)"),
        ({"LR_SCHEDULER": "linear"}, "LR_SCHEDULER=cosine (now linear)"),
        ({"MAX_STEPS": "16"}, "MAX_STEPS=8 (now 16)"),
        ({"LORA_R": "16"}, "LORA_R=64 (now 16)"),
        ({"BATCH_SIZE": "1"}, "a global batch of 2 (BATCH_SIZE 2 x GRAD_ACCUM 1 x 1 processes)"),
    ],
)
def test_a_resume_with_another_setting_is_refused_naming_it(resumable, change, named):
    line = _refused({**resumable, **change})
    assert named in line and "its checkpoint-8 was trained with" in line
    assert line.endswith("start afresh with RESUME=0 or another OUTPUT_DIR")
    preflight({**resumable, **change, "RESUME": "0"}, "lora")  # the way out


def test_the_other_launcher_is_named(resumable):
    with pytest.raises(SettingError, match="trained as LoRA fine-tuning \\(now full"):
        preflight({**resumable, "DEEPSPEED_CONFIG": ""}, "full")


def test_data_changed_since_is_named_by_content(resumable, four_samples, tmp_path):
    """The checkpoint records its training file's content: the same path holding other samples
    (a rebuilt dataset) is refused; so is another prompt in the data's folder."""
    data = tmp_path / "data"
    data.mkdir()
    samples = json.loads(four_samples.read_text())
    for sample in samples:
        sample["video"] = str(four_samples.parent / sample["video"])
    (data / "train.json").write_text(json.dumps(samples))
    shutil.copyfile(four_samples.parent / "prompt.json", data / "prompt.json")
    shutil.copyfile(four_samples.parent / "answer_format.json", data / "answer_format.json")
    checkpoint = Path(resumable["OUTPUT_DIR"]) / "checkpoint-8"
    record = json.loads((checkpoint / "training.json").read_text())
    from qwenvl.data.samples import file_hash

    record["settings"]["DATASETS"] = str(data / "train.json")
    record["datasets"] = [
        {"dataset": str(data / "train.json"), "file": str(data / "train.json"),
         "xxh3": file_hash(data / "train.json")}
    ]  # fmt: skip
    (checkpoint / "training.json").write_text(json.dumps(record))
    env = {**resumable, "DATASETS": str(data / "train.json")}
    preflight(env, "lora")  # the same content: resumes
    (data / "train.json").write_text(json.dumps(samples[:3]))
    assert f"DATASETS: {data / 'train.json'} (its content changed since)" in _refused(env)
    (data / "train.json").write_text(json.dumps(samples))
    PromptSettings(ego_history_seconds=1.0).save(data)
    assert "the prompt of its data (ego_history_seconds 0.0 vs 1.0)" in _refused(env)


def test_another_number_of_processes_keeps_the_global_batch(resumable):
    """Without DeepSpeed: the global batch (BATCH_SIZE x GRAD_ACCUM x processes) is kept by the
    accumulation where it can be, and refused naming it where it cannot."""
    values = preflight({**resumable, "BATCH_SIZE": "1", "NPROC_PER_NODE": "2"}, "lora")
    assert values["GRAD_ACCUM"] == 1  # 1 x 1 x 2 = 2: as trained
    line = _refused({**resumable, "NPROC_PER_NODE": "2"})
    assert "a global batch of 2 (BATCH_SIZE 2 x GRAD_ACCUM 1 x 1 processes), not 4" in line


def test_a_zero_checkpoint_of_another_world_size_is_resumed_once_converted(resumable, capsys):
    """A ZeRO-3 checkpoint written by 2 processes, resumed by 1: refused with DeepSpeed's own
    conversion command until converted, then resumed (as a universal checkpoint)."""
    out = Path(resumable["OUTPUT_DIR"])
    checkpoint = out / "checkpoint-8"
    record = json.loads((checkpoint / "training.json").read_text())
    record["world_size"], record["settings"]["DEEPSPEED_CONFIG"] = 2, "zero3.json"
    record["settings"]["BATCH_SIZE"] = 1  # 1 x 1 x 2 processes: the global batch of 2
    (checkpoint / "training.json").write_text(json.dumps(record))
    (checkpoint / "latest").write_text("global_step8")
    (checkpoint / "global_step8").mkdir()
    for rank in (0, 1):  # the shards' names tell who wrote them; torch.save makes them whole
        torch.save(
            {}, checkpoint / "global_step8" / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"
        )
    env = {**resumable, "DEEPSPEED_CONFIG": "zero3.json", "BATCH_SIZE": "1"}
    line = _refused(env)
    assert "was written by 2 ZeRO-3 processes and this run has 1" in line
    assert (
        f"python -m deepspeed.checkpoint.ds_to_universal --input_folder {checkpoint}/global_step8 "
        f"--output_folder {checkpoint}/global_step8_universal" in line
    )
    (checkpoint / "latest_universal").write_text("global_step8_universal")
    values = preflight(env, "lora")
    assert values["GRAD_ACCUM"] == 2  # 1 x 2 x 1 process: the global batch of 2 kept
    assert "resuming on 1 processes (was 2): GRAD_ACCUM 1 -> 2 keeps a global batch of 2" in (
        capsys.readouterr().out
    )


def test_a_live_run_holds_its_output_dir(tmp_path, caplog):
    out = tmp_path / "out"
    with locked(out):
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(
            UserError, match=f"a run on {socket.gethostname()} \\(pid {os.getpid()}"
        ):
            with locked(out):
                pass
    assert not (out / LOCK_FILE).exists()
    # A lock whose process is gone (a crash) is taken over, with a line saying so.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(gone), "host": socket.gethostname()}))
    with locked(out):
        pass
    assert f"taking over the lock of {out}: its run (pid {gone}" in caplog.text
    # Another host's lock cannot be checked from here: refused, with the way out.
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "node-b", "since": "t"}))
    with pytest.raises(UserError, match=f"if that run is gone, delete {out / LOCK_FILE}"):
        with locked(out):
            pass


def test_the_launcher_refuses_an_output_dir_a_live_run_holds(resumable, capsys):
    out = Path(resumable["OUTPUT_DIR"])
    with locked(out):
        os.environ.update(resumable)
        try:
            assert launch.main(["lora"]) == 2
        finally:
            for name in resumable:
                os.environ.pop(name, None)
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: OUTPUT_DIR={out}: a run on ") and "trains into it" in err
