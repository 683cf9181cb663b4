"""Faults of the machine, not of the data: a full disk while segmenting, evaluating or saving a
checkpoint is one line naming the path, with nothing complete-looking left behind; a Ray
cluster that cannot be joined is one line in seconds; a killed run's temporaries are cleaned up
by the next run into the same place."""

from __future__ import annotations

import errno
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, launcher_env, run_script, script_main

from qwenvl.train.resume import find_resume_checkpoint


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tmpfs of the size asked for: a disk that fills up. Mounting needs root
    (CI and the dev machines have it); without, the tests inject ENOSPC where they can."""
    mounts = []

    def make(kib: int) -> Path | None:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
            capture_output=True,
        )
        if mounted.returncode != 0:
            return None
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "injected")


def test_segmenting_onto_a_full_disk_is_one_line(raw_dataset, small_disk, monkeypatch, capsys):
    disk = small_disk(200)  # the 20 segments of the 4 clips need about 600 KiB
    if disk is not None:
        result = run_script(
            "scripts/prepare_video_segments.py", "--data-dir", str(raw_dataset),
            "--output-dir", str(disk / "seg"), "--workers", "1", check=False,
        )  # fmt: skip
        last = result.stderr.strip().splitlines()[-1]
    else:
        from qwenvl.prepare import writer

        monkeypatch.setattr(writer._SegmentWriter, "add", _enospc)
        disk = Path(raw_dataset).parent.parent / "injected"
        argv = ["--data-dir", str(raw_dataset), "--output-dir", str(disk / "seg")]
        result = type("R", (), {"returncode": script_main("prepare_video_segments")(argv)})
        last = capsys.readouterr().err.strip().splitlines()[-1]
    assert result.returncode == 2 and "no space left on device" in last and "Traceback" not in last
    assert not (disk / "seg").exists()  # the clips done wait in .seg.partial for --resume


def test_evaluating_onto_a_full_disk_is_one_line(
    tiny_model_dir, training_dir, small_disk, monkeypatch, capsys, tmp_path
):
    disk = small_disk(12)  # the report and its histogram need more
    if disk is None:
        import qwenvl.evaluate.report

        monkeypatch.setattr(qwenvl.evaluate.report, "write_plots", _enospc)
        disk = tmp_path
    argv = ["--model-path", str(tiny_model_dir), "--test-json", str(training_dir / "test.json")]
    argv += ["--max-samples", "2", "--max-new-tokens", "8", "--output-dir", str(disk / "eval")]
    assert script_main("evaluate")(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no space left on device" in last
    assert not list(disk.glob("*eval*"))  # neither the output nor its temporary folder


def test_a_checkpoint_onto_a_full_disk_is_one_line_and_never_resumed_from(
    tiny_model_dir, four_samples, small_disk
):
    disk = small_disk(4096)  # the adapter (2.4 MB) fits, its optimizer state (4.9 MB) does not
    if disk is None:
        pytest.skip("filling a disk under a launcher needs a tmpfs (root)")
    out = disk / "run"
    env = launcher_env(tiny_model_dir, four_samples, out, MAX_STEPS=2, SAVE_STEPS=1, BATCH_SIZE=2)
    result = run_script(str(ROOT / "train_physical_ai_lora.sh"), env=env, check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "checkpoint-1: no space left on device while saving this checkpoint" in last
    assert "Traceback" not in result.stderr
    assert (out / "checkpoint-1").is_dir() and find_resume_checkpoint(out) is None


def test_an_unreachable_ray_cluster_is_one_line_in_seconds(raw_dataset, tmp_path):
    start = time.monotonic()
    result = run_script(
        "scripts/prepare_video_segments.py", "--data-dir", str(raw_dataset),
        "--output-dir", str(tmp_path / "seg"), "--ray", "127.0.0.1:1", check=False,
    )  # fmt: skip
    assert time.monotonic() - start < 15
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --ray 127.0.0.1:1: cannot join Ray, nothing answers there (Connection refused); "
        "start it with `ray start --head` on that node, or pass the address it printed"
    ]
    assert not list(tmp_path.iterdir())  # nothing staged


def test_a_killed_runs_temporary_output_is_removed_by_the_next_run(tmp_path):
    stale = tmp_path / ".tiny.tmp-999999999"  # no process has that id
    stale.mkdir()
    (stale / "config.json").write_text("{")
    live = tmp_path / f".tiny.tmp-{1}"  # pid 1 runs: another run's, left alone
    live.mkdir()
    assert script_main("make_tiny_model")(["--output-dir", str(tmp_path / "tiny")]) == 0
    assert not stale.exists() and live.exists() and (tmp_path / "tiny" / "config.json").is_file()
