"""Shared fixtures: a tiny Qwen3-VL and a small synthetic dataset, built once per session."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    """A TCP port nobody listens on now, for a torchrun master."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(
    *args: str,
    env: dict | None = None,
    check: bool = True,
    timeout: int = 900,
    cwd: Path | None = None,
):
    """Run one of our scripts as a user would (from the project folder, or `cwd`); returns the
    CompletedProcess."""
    cmd = [sys.executable, *args] if args[0].endswith(".py") else list(args)
    if cwd is not None and args[0].endswith(".py") and not Path(args[0]).is_absolute():
        cmd[1] = str(ROOT / args[0])
    result = subprocess.run(
        cmd,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


_SCRIPTS: dict[str, object] = {}


def script_module(name: str):
    """scripts/<name>.py as a module of this process."""
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(
            f"scripts_{name}", ROOT / "scripts" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


def script_main(name: str):
    """A script's main(argv), run in this process: what the script does, without starting a
    Python (each import of torch and transformers costs seconds) for checks that need none."""
    return script_module(name).main


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (symlinks followed) -> a hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_main(name: str, *argv) -> None:
    """Run scripts/<name>.py's main in this process (no interpreter to start, no torch to
    import again), where the subprocess is not what a test is about; it must succeed."""
    status = script_main(name)([str(a) for a in argv])
    assert status == 0, f"{name} {' '.join(map(str, argv))} exited {status}"


def train_in_process(kind: str, env: dict, *extra: str, check: bool = True) -> int:
    """A one-process training run as a launcher makes it (the environment's settings through its
    pre-flight to train.py's arguments), with train.py's main run in this process: for tests
    of what a run trains and writes. The launchers' own tests start the real thing. Returns
    train.py's exit status, which must be 0 when `check`."""
    from qwenvl.train import config
    from qwenvl.train.preflight import preflight

    values = preflight({**os.environ, **{k: str(v) for k, v in env.items()}}, kind)
    assert values["NPROC_PER_NODE"] == 1 and not values["DEEPSPEED_CONFIG"], "launch these"
    argv = [str(a) for a in (*config.train_arguments(values, kind), *extra)]
    status = script_main("train")(argv)
    assert status == 0 or not check, f"train {' '.join(argv)} exited {status}"
    return status


@contextmanager
def captured_log(level: int = logging.INFO) -> Iterator[io.StringIO]:
    """What the library logs at `level` and above while the block runs, as a run's log shows it
    (for fixtures wider than one test, where pytest's caplog does not reach)."""
    stream, root = io.StringIO(), logging.getLogger()
    handler, before = logging.StreamHandler(stream), root.level
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def call_main(capsys, name: str, *argv) -> SimpleNamespace:
    """scripts/<name>.py's main in this process, its result shaped like a finished subprocess
    (returncode, stdout, stderr), for tests that read what it printed."""
    capsys.readouterr()
    code = script_main(name)([str(a) for a in argv])
    printed = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    run_main("make_tiny_model", "--output-dir", out, "--seed", "0")
    return out


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory) -> Path:
    """Four 6-second clips at 160x96 in the raw layout."""
    out = tmp_path_factory.mktemp("raw") / "data"
    run_main("make_synthetic_data", "--output-dir", out, "--num-clips", "4", "--clip-seconds",
             "6", "--width", "160", "--height", "96", "--seed", "3")  # fmt: skip
    return out


@pytest.fixture(scope="session")
def segments_dir(raw_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("segments") / "segments"
    run_script(
        "scripts/prepare_video_segments.py",
        "--data-dir",
        str(raw_dataset),
        "--output-dir",
        str(out),
        "--workers",
        "2",
    )
    return out


def build_training_json(segments: Path, base: Path, *split_args: str) -> Path:
    """Run the dataset and training-JSON steps on segments; the folder of train/val/test.json.
    The split is the clip index's official one unless `split_args` say otherwise."""
    run_main("prepare_huggingface_dataset", "--segments-dir", segments, "--output-dir",
             base / "hf", *split_args)  # fmt: skip
    run_main("convert_to_training_format", "--input-dir", base / "hf", "--output-dir",
             base / "training")  # fmt: skip
    return base / "training"


@pytest.fixture(scope="session")
def training_dir(segments_dir, tmp_path_factory) -> Path:
    return build_training_json(segments_dir, tmp_path_factory.mktemp("dataset"))


SMALL_VIDEO = {"VIDEO_MIN_PIXELS": str(32 * 32), "VIDEO_MAX_PIXELS": str(16 * 32 * 32)}


def assert_two_ranks_evaluate_as_one(
    model: Path, test_json: Path, tmp_path: Path, video: dict = SMALL_VIDEO
) -> None:
    """evaluate.py on two ranks writes the predictions and metrics one process writes (on the
    GPUs where there are, else the CPU), at the `video` settings."""

    argv = ["--model-path", str(model), "--test-json", str(test_json), "--max-samples", "5",
            "--batch-size", "2", "--output-dir"]  # fmt: skip
    with mock.patch.dict(os.environ, video):  # one process: this one
        run_main("evaluate", *argv, tmp_path / "one")
    ranks = {"NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port())}
    two = run_script("scripts/evaluate.py", *argv, str(tmp_path / "two"), env={**video, **ranks})
    assert "x 2 ranks" in two.stdout
    for name in ("predictions.jsonl", "metrics.json"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def launcher_env(model, data, out, **extra) -> dict:
    """The settings every launcher test runs with (small video, no workers), and `extra`."""
    return {
        "MODEL_PATH": str(model),
        "DATASETS": str(data),
        "OUTPUT_DIR": str(out),
        "DATALOADER_WORKERS": "0",
        "LOGGING_STEPS": "1",
        "GRAD_ACCUM": "1",
        "MASTER_PORT": str(free_port()),
        **SMALL_VIDEO,
        **{k: str(v) for k, v in extra.items()},
    }


@pytest.fixture(scope="session")
def four_samples(training_dir) -> Path:
    """A training JSON of 4 samples, with video paths valid from its own folder."""
    samples = json.loads((training_dir / "train.json").read_text())[:4]
    path = training_dir / "four.json"
    path.write_text(json.dumps(samples))
    return path


# The one short LoRA run the tests of a trained adapter share (checkpoints 2, 4, 6, 8).
LORA_RUN = dict(MAX_STEPS=8, BATCH_SIZE=2, LR="5e-3", SAVE_STEPS=2, SAVE_TOTAL_LIMIT=5, SEED=11)


@pytest.fixture(scope="session")
def lora_run(tiny_model_dir, four_samples, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora_run") / "lora"
    train_in_process("lora", launcher_env(tiny_model_dir, four_samples, out, **LORA_RUN))
    return out


@pytest.fixture(scope="session")
def dirty_training(training_dir, tmp_path_factory) -> Path:
    """A train.json of good samples and three that must not train: one whose mp4 holds 15 of
    the 30 frames it claims (its header intact), one answer of 29 pairs, one negative fps."""
    from qwenvl.standins.render import encode_mp4
    from qwenvl.video import decode_video

    out = tmp_path_factory.mktemp("dirty")
    samples = json.loads((training_dir / "train.json").read_text())[:7]
    for sample in samples:
        sample["video"] = str(training_dir / sample["video"])
    half, short, negative = samples[4:7]
    frames, _ = decode_video(half["video"])
    (out / "half.mp4").write_bytes(encode_mp4(frames[:15], frames.shape[2], frames.shape[1]))
    half.update(id="half-decodable", video=str(out / "half.mp4"))
    answer = short["conversations"][1]["value"]
    short["conversations"][1]["value"] = answer.rsplit(", (", 1)[0] + "]"
    short["id"] = "29-pairs"
    negative.update(id="negative-fps", fps=-30.0)
    (out / "train.json").write_text(json.dumps(samples))
    return out


def path_without_uv() -> str:
    """PATH as inside the project's .venv (its bin first), with every folder holding uv left out."""
    folders = [f for f in os.environ["PATH"].split(os.pathsep) if not (Path(f) / "uv").exists()]
    return os.pathsep.join([str(ROOT / ".venv" / "bin"), *folders])


# `make demo` and `make ablation` on fewer and shorter clips, fewer steps and test samples.
SMALL_DEMO = {
    "DEMO_CLIPS": "2",
    "DEMO_CLIP_SECONDS": "4",
    "DEMO_MAX_STEPS": "2",
    "DEMO_EVAL_SAMPLES": "2",
}
