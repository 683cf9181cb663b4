"""Hostile inputs a user can give any script: each is one line naming the cause, exit status 2,
and nothing written or lost (an output folder whose parent cannot be written, a bad process
count, a comma in a path, a resume of segmenting with other settings, a test set that repeats a
sample)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import script_main, snapshot

from qwenvl.train.config import SettingError


@pytest.fixture
def read_only(tmp_path):
    """A folder nothing can be written into: a read-only tmpfs where mounting is allowed (root
    can write through permissions), else a folder without write permission."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("root without mount: no folder it cannot write")
        folder.chmod(0o555)
    yield folder
    if mounted.returncode == 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    else:
        folder.chmod(0o755)


def test_an_output_whose_parent_cannot_be_written_is_one_line(
    read_only, training_dir, tiny_model_dir, capsys, monkeypatch
):
    out = read_only / "out"
    convert = ["--input-dir", str(training_dir.parent / "hf"), "--output-dir", str(out)]
    assert script_main("convert_to_training_format")(convert) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {out}: cannot be written ({read_only} is read-only for this user)"
    )
    evaluate = ["--model-path", str(tiny_model_dir), "--test-json",
                str(training_dir / "test.json"), "--output-dir", str(out)]  # fmt: skip
    assert script_main("evaluate")(evaluate) == 2
    assert "is read-only for this user" in capsys.readouterr().err
    from qwenvl.train import launch

    for name, value in {"MODEL_PATH": str(tiny_model_dir), "OUTPUT_DIR": str(out),
                        "DATASETS": str(training_dir / "train.json")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert launch.main(["lora"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: OUTPUT_DIR={out}")


@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_evaluate_on_a_process_count_that_is_none_is_one_line(monkeypatch, capsys, value):
    from qwenvl import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("NPROC_PER_NODE", value)
    with pytest.raises(SystemExit) as exited:
        distributed.relaunch_under_torchrun("scripts/evaluate.py", [])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: NPROC_PER_NODE={value}: expected an integer, at least 1"
    )


def test_a_comma_inside_a_datasets_path_is_named(training_dir, tiny_model_dir, tmp_path):
    from qwenvl.train.preflight import preflight

    folder = tmp_path / "a,b"
    shutil.copytree(training_dir, folder)
    env = {"MODEL_PATH": str(tiny_model_dir), "OUTPUT_DIR": str(tmp_path / "out"),
           "DATASETS": str(folder / "train.json")}  # fmt: skip
    with pytest.raises(SettingError, match="commas separate datasets, and this path holds one"):
        preflight(env, "lora")


def test_resuming_segmenting_with_other_settings_is_refused(raw_dataset, tmp_path, capsys):
    """--resume keeps an interrupted run's clips: cut with another --max-width (or camera, or
    dataset) they would mix two kinds of segment in one manifest."""
    out = tmp_path / "seg"
    staging = tmp_path / ".seg.partial"
    (staging / "clips").mkdir(parents=True)
    settings = {"data_dir": str(raw_dataset.resolve()), "camera": "camera_front_wide_120fov",
                "max_width": 320}  # fmt: skip
    (staging / "settings.json").write_text(json.dumps(settings))
    before = snapshot(staging)
    argv = ["--data-dir", str(raw_dataset), "--output-dir", str(out), "--resume", "--max-width",
            "640"]  # fmt: skip
    assert script_main("prepare_video_segments")(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --resume: the interrupted run in {staging} cut its clips ")
    assert "max_width 320 (now 640)" in err and snapshot(staging) == before
    (staging / "settings.json").unlink()
    assert script_main("prepare_video_segments")(argv) == 2
    assert "records no settings" in capsys.readouterr().err and not out.exists()


def test_a_test_set_that_repeats_a_sample_scores_it_once(
    tiny_model_dir, training_dir, tmp_path, capsys
):
    samples = json.loads((training_dir / "test.json").read_text())[:2]
    for sample in samples:
        sample["video"] = str(training_dir / sample["video"])
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.json").write_text(json.dumps([samples[0], samples[1], samples[0]]))
    argv = ["--model-path", str(tiny_model_dir), "--test-json", str(data / "test.json"),
            "--max-new-tokens", "8", "--output-dir", str(tmp_path / "eval")]  # fmt: skip
    assert script_main("evaluate")(argv) == 0
    assert "1 samples repeat the id of an earlier one; each id is scored once" in (
        capsys.readouterr().err
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["parse"]["total"] == 2 and metrics["test_set"]["samples"] == 2
