"""`make ablation`, shortened: `make demo` with two more models, the front camera's video alone
and the front and both cross cameras' video, scored on the same test segments. Run apart from
`make test` (`make test-ablation`, and in CI): three trainings and four evaluations, each its
own process, take longer than the rest of a test run allows."""

from __future__ import annotations

import json

from conftest import SMALL_DEMO, path_without_uv, run_script
from PIL import Image


def test_make_ablation_runs_the_pipeline_and_writes_reports(tmp_path):
    """`make ablation` is `make demo` with the front camera's video-only model and the front and
    cross cameras' one beside the history one."""
    demo = tmp_path / "demo"
    # As when make runs inside the project's .venv: its python3 has no pip, no uv on PATH.
    env = {"DEMO_DIR": str(demo), **SMALL_DEMO, "PATH": path_without_uv()}
    result = run_script("make", "ablation", f"DEMO_DIR={demo}", env=env, timeout=1500)
    for name in ("zero-shot", "video", "cameras", "history"):
        report = (demo / "eval" / name / "report.md").read_text()
        assert "| accel_and_curvature_rate |" in report and "Strongest baseline:" in report
        metrics = json.loads((demo / "eval" / name / "metrics.json").read_text())
        assert metrics["parse"]["total"] == 2
        gallery = json.loads((demo / "eval" / name / "gallery.json").read_text())
        assert gallery["clips"] and not gallery["without_overlay"]  # synthetic clips: calibrated
        assert all((demo / "eval" / name / p["image"]).is_file() for p in gallery["clips"])
    for variant in ("video", "cameras", "history"):
        assert (demo / "checkpoints" / variant / "model.safetensors").is_file()
    history = json.loads((demo / "checkpoints" / "history" / "prompt.json").read_text())
    assert history["ego_history_seconds"] == 1 and history["history_hz"] == 10
    assert history["cameras"] == []  # the front camera alone: the one-camera prompt
    cameras = json.loads((demo / "checkpoints" / "cameras" / "prompt.json").read_text())
    assert cameras["cameras"] == [
        "camera_front_wide_120fov", "camera_cross_left_120fov", "camera_cross_right_120fov"
    ]  # fmt: skip
    lines = result.stdout.splitlines()  # the three-camera model predicted a clip
    asked = next(i for i, line in enumerate(lines) if line.startswith("-- the three-camera"))
    assert ".mp4: [(" in lines[asked + 1]
    rendered = list((demo / "predict_render").glob("*.png"))
    assert len(rendered) == 1 and Image.open(rendered[0]).size == (320, 180)
    rows = {
        line.split("|")[1].strip(): line
        for line in result.stdout.splitlines()
        if line.startswith("| ")
    }
    for name in ("zero-shot", "video-only", "video-3-cameras", "video+history"):  # all answer
        cells = [c.strip() for c in rows[name].split("|")[2:-1]]
        assert cells and all(c != "-" for c in cells), rows[name]
    assert "From zero-shot to video-only: ADE" in result.stdout
    assert "From video-only to video-3-cameras: ADE" in result.stdout
    assert "The strongest baseline is" in result.stdout and "reports:" in result.stdout
    comparison = (demo / "eval" / "comparison.md").read_text()
    assert "comparison_gallery/" in comparison
