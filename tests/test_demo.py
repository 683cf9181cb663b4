"""`make demo`, shortened: the whole pipeline runs and ends with a report and the metrics table."""

from __future__ import annotations

import json

from conftest import run_script


def test_make_demo_runs_the_pipeline_and_writes_reports(tmp_path):
    demo = tmp_path / "demo"
    env = {
        "DEMO_DIR": str(demo),
        "DEMO_CLIPS": "2",
        "DEMO_CLIP_SECONDS": "4",
        "DEMO_MAX_STEPS": "3",
        "DEMO_EVAL_SAMPLES": "2",
    }
    result = run_script("make", "demo", f"DEMO_DIR={demo}", env=env, timeout=1500)
    for name in ("base", "lora"):
        report = demo / "eval" / name / "report.md"
        assert report.is_file() and "| hold_last |" in report.read_text()
        metrics = json.loads((demo / "eval" / name / "metrics.json").read_text())
        assert metrics["parse"]["total"] == 2
    assert (demo / "merged" / "config.json").is_file()
    assert (demo / "checkpoints" / "lora" / "adapter_model.safetensors").is_file()
    assert "| fine-tuned |" in result.stdout and "reports:" in result.stdout
