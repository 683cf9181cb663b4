"""Beyond one process: data preparation on Ray and resumed after a kill, evaluation on ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
from conftest import ROOT, assert_two_ranks_evaluate_as_one, run_script

from qwenvl.prepare import rawdata
from qwenvl.standins.synthetic import write_synthetic_dataset


def _prepare(raw: Path, out: Path, *extra: str, **kwargs):
    return run_script(
        "scripts/prepare_video_segments.py", "--data-dir", str(raw), "--output-dir", str(out),
        "--workers", "1", "--max-width", "64", *extra, **kwargs,
    )  # fmt: skip


def _same_outputs(got: Path, expected: Path) -> None:
    pd.testing.assert_frame_equal(
        pd.read_parquet(got / "manifest.parquet"), pd.read_parquet(expected / "manifest.parquet")
    )
    for name in ("skipped.json", "dropped_segments.json", "summary.json"):
        assert (got / name).read_text() == (expected / name).read_text(), name
    videos = sorted(p.relative_to(expected) for p in (expected / "videos").rglob("*.mp4"))
    assert sorted(p.relative_to(got) for p in (got / "videos").rglob("*.mp4")) == videos
    assert not (got / "clips").exists()


def test_ray_prep_gives_the_local_outputs_and_skipped_list(raw_dataset, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dataset, raw)
    dataset = rawdata.RawDataset(raw)
    clip_id, chunk = dataset.clip_index.index[0], int(dataset.clip_index["chunk"].iloc[0])
    camera_zip = raw / dataset.chunk_file(dataset.camera, chunk)
    member = dataset.member(dataset.camera, clip_id, "video")
    with zipfile.ZipFile(camera_zip) as old:
        members = {name: old.read(name) for name in old.namelist()}
    members[member] = b"not a video" * 50
    with zipfile.ZipFile(camera_zip, "w") as new:
        for name, data in members.items():
            new.writestr(name, data)
    _prepare(raw, tmp_path / "local")
    result = _prepare(raw, tmp_path / "ray", "--ray", env={"RAY_USAGE_STATS_ENABLED": "0"})
    assert f"skipped clip {clip_id}" in result.stderr and "segmenting clips" in result.stderr
    _same_outputs(tmp_path / "ray", tmp_path / "local")
    assert clip_id in json.loads((tmp_path / "ray" / "skipped.json").read_text())


def test_prep_killed_midway_resumes_without_redoing_a_clip(tmp_path):
    raw = tmp_path / "raw"
    write_synthetic_dataset(
        raw, 8, clip_seconds=3, width=64, height=48, seed=6, chunk_size=4, progress=False
    )
    _prepare(raw, tmp_path / "once")
    out = tmp_path / "seg"
    staging = tmp_path / ".seg.partial"
    command = [sys.executable, "scripts/prepare_video_segments.py", "--data-dir", str(raw)]
    command += ["--output-dir", str(out), "--workers", "1", "--max-width", "64"]
    proc = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while len(list((staging / "clips").glob("*.json"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "prep ended before the kill"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing that looks complete
    done = {p.stem for p in (staging / "clips").glob("*.json")}
    written = {p: p.stat().st_mtime_ns for c in done for p in (staging / "videos" / c).glob("*")}
    assert written
    result = _prepare(raw, out, "--resume")
    assert f"resuming: {len(done)} clips already segmented, {8 - len(done)} to go" in result.stdout
    _same_outputs(out, tmp_path / "once")
    for path, mtime in written.items():  # finished clips were not redone
        moved = out / path.relative_to(staging)
        assert moved.stat().st_mtime_ns == mtime
    assert not staging.exists()


def test_evaluation_on_two_ranks_equals_one_process(tiny_model_dir, training_dir, tmp_path):
    assert_two_ranks_evaluate_as_one(tiny_model_dir, training_dir / "test.json", tmp_path)
