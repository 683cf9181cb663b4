"""What every benchmark shares: the best of a few timed runs, the machine, the tiny model and
training data built as inputs, and a script's time and peak memory in a fresh process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def best_time(fn, repeats: int) -> float:
    """Fastest wall time of `repeats` calls: the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict:
    import torch

    info = {
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_scripts(steps: list[tuple[str, list]]) -> None:
    """Run the project's scripts one after the other, as a user would."""
    for script, args in steps:
        subprocess.run(
            [sys.executable, SCRIPTS / script, *map(str, args)], check=True, capture_output=True
        )


def prepare_inputs(work: Path, model_path: str | None, data: bool = True) -> tuple[str, Path]:
    """A tiny model (unless given) and training JSON from 2 synthetic 640x360 clips (built only
    with `data`)."""
    if model_path is None:
        model_path = str(work / "tiny_model")
        if not Path(model_path).exists():
            run_scripts([("make_tiny_model.py", ["--output-dir", model_path])])
    training = work / "training"
    if data and not training.exists():
        run_scripts(
            [
                ("make_synthetic_data.py", ["--output-dir", work / "raw_loader", "--num-clips",
                                            "2", "--clip-seconds", "8", "--seed", "1",
                                            "--no-progress"]),
                ("prepare_video_segments.py", ["--data-dir", work / "raw_loader",
                                               "--output-dir", work / "seg"]),
                ("prepare_huggingface_dataset.py", ["--segments-dir", work / "seg",
                                                    "--output-dir", work / "hf", "--split",
                                                    "by-clip", "--val-fraction", "0",
                                                    "--test-fraction", "0"]),
                ("convert_to_training_format.py", ["--input-dir", work / "hf", "--output-dir",
                                                   training]),
            ]
        )  # fmt: skip
    return model_path, training / "train.json"


_MEASURED = """
import json, runpy, sys, time
out, script, *args = sys.argv[1:]
sys.argv = [script, *args]
start = time.perf_counter()
try:
    runpy.run_path(script, run_name="__main__")
    code = 0
except SystemExit as exit:
    code = exit.code or 0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak = int(status.split()[0]) / 1024**2
with open(out, "w") as f:
    json.dump({"seconds": time.perf_counter() - start, "peak_gib": peak, "exit": code}, f)
"""


def measured(work: Path, script: Path, *args) -> dict:
    """Seconds and peak memory (resident set, GiB) of one run of `script` in a fresh process;
    the seconds leave out the interpreter's start, not the script's own imports."""
    report = work / "measured.json"
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(report), str(script), *map(str, args)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result = json.loads(report.read_text())
    if result.pop("exit"):
        raise RuntimeError(f"{script.name} {' '.join(map(str, args))} failed")
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if last.startswith("{"):  # what the script measured itself
        result.update(json.loads(last))
    return result
