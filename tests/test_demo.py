"""`make demo`, shortened: the whole pipeline runs and ends with a report and the metrics table."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from conftest import ROOT, SMALL_DEMO, path_without_uv, run_script
from PIL import Image


def test_uv_installs_from_inside_the_venv_without_pip(tmp_path):
    env = {"PATH": path_without_uv()}
    assert shutil.which("uv", path=env["PATH"]) is None
    venv_python = run_script("python3", "-c", "import sys; print(sys.prefix)", env=env)
    assert Path(venv_python.stdout.strip()) == Path(sys.prefix)  # python3 is the .venv's
    run_script("bash", "scripts/install_uv.sh", str(tmp_path / "uv"), env=env, timeout=600)
    version = run_script(str(tmp_path / "uv" / "bin" / "uv"), "--version")
    assert version.stdout.startswith("uv ")


def test_make_demo_runs_the_pipeline_and_writes_reports(tmp_path):
    """The README's first command, on fewer and shorter clips: clips to segments to a dataset
    with ego history, a fine-tune through the launcher, zero-shot and fine-tuned evaluations
    with their galleries, one prediction drawn on its clip, the comparison. (`make ablation`,
    the same with two more models, runs in tests/ablation: `make test-ablation`.)"""
    demo = tmp_path / "demo"
    # As when make runs inside the project's .venv: its python3 has no pip, no uv on PATH.
    env = {"DEMO_DIR": str(demo), **SMALL_DEMO, "PATH": path_without_uv()}
    result = run_script("make", "demo", f"DEMO_DIR={demo}", env=env, timeout=1500)
    for name in ("zero-shot", "history"):
        report = (demo / "eval" / name / "report.md").read_text()
        assert "| accel_and_curvature_rate |" in report and "Strongest baseline:" in report
        metrics = json.loads((demo / "eval" / name / "metrics.json").read_text())
        assert metrics["parse"]["total"] == 2
        gallery = json.loads((demo / "eval" / name / "gallery.json").read_text())
        assert gallery["clips"] and not gallery["without_overlay"]  # synthetic clips: calibrated
        assert all((demo / "eval" / name / p["image"]).is_file() for p in gallery["clips"])
    assert (demo / "checkpoints" / "history" / "model.safetensors").is_file()
    assert not (demo / "checkpoints" / "video").exists()  # the ablation's models: not here
    history = json.loads((demo / "checkpoints" / "history" / "prompt.json").read_text())
    assert history["ego_history_seconds"] == 1 and history["history_hz"] == 10
    assert history["cameras"] == []  # the front camera alone: the one-camera prompt
    rendered = list((demo / "predict_render").glob("*.png"))
    assert len(rendered) == 1 and Image.open(rendered[0]).size == (320, 180)
    rows = {
        line.split("|")[1].strip(): line
        for line in result.stdout.splitlines()
        if line.startswith("| ")
    }
    for name in ("zero-shot", "video+history"):  # both answer
        cells = [c.strip() for c in rows[name].split("|")[2:-1]]
        assert cells and all(c != "-" for c in cells), rows[name]
    assert "video-only" not in rows
    assert "From zero-shot to video+history: ADE" in result.stdout
    assert "The strongest baseline is" in result.stdout and "reports:" in result.stdout
    comparison = (demo / "eval" / "comparison.md").read_text()
    assert "comparison_gallery/" in comparison


def test_make_keeps_extras_installed_by_hand(tmp_path):
    """`make test` and `make demo` sync the environment without removing what is installed
    beyond the extras they name (flash-attn and bitsandbytes on a GPU machine): --inexact."""
    plan = run_script("make", "-n", "test", "demo").stdout
    assert all("--inexact" in line for line in plan.splitlines() if " sync " in line)
    package = tmp_path / "extra_by_hand"
    (package / "extra_by_hand").mkdir(parents=True)
    (package / "extra_by_hand" / "__init__.py").write_text("")
    (package / "pyproject.toml").write_text(
        '[project]\nname = "extra-by-hand"\nversion = "1.0"\n'
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    uv = shutil.which("uv") or str(ROOT / ".tools" / "uv" / "bin" / "uv")
    python = str(ROOT / ".venv" / "bin" / "python")
    run_script(uv, "pip", "install", "--python", python, "--no-deps", "--no-build-isolation",
               str(package))  # fmt: skip
    try:
        run_script("make", "sync")
        found = run_script(python, "-c", "import extra_by_hand; print('kept')", check=False)
        assert found.stdout.strip() == "kept", found.stderr
    finally:
        run_script(uv, "pip", "uninstall", "--python", python, "extra-by-hand", check=False)
