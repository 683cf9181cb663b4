"""Shared fixtures: a tiny Qwen3-VL and a small synthetic dataset, built once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    """A TCP port nobody listens on now, for a torchrun master."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(*args: str, env: dict | None = None, check: bool = True, timeout: int = 900):
    """Run one of our scripts as a user would; returns the CompletedProcess."""
    cmd = [sys.executable, *args] if args[0].endswith(".py") else list(args)
    result = subprocess.run(
        cmd,
        cwd=ROOT,
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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    run_script("scripts/make_tiny_model.py", "--output-dir", str(out), "--seed", "0")
    return out


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory) -> Path:
    """Four 6-second clips at 160x96 in the raw layout."""
    out = tmp_path_factory.mktemp("raw") / "data"
    run_script(
        "scripts/make_synthetic_data.py",
        "--output-dir",
        str(out),
        "--num-clips",
        "4",
        "--clip-seconds",
        "6",
        "--width",
        "160",
        "--height",
        "96",
        "--seed",
        "3",
    )
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
    run_script(
        "scripts/prepare_huggingface_dataset.py",
        "--segments-dir",
        str(segments),
        "--output-dir",
        str(base / "hf"),
        *split_args,
    )
    run_script(
        "scripts/convert_to_training_format.py",
        "--input-dir",
        str(base / "hf"),
        "--output-dir",
        str(base / "training"),
    )
    return base / "training"


@pytest.fixture(scope="session")
def training_dir(segments_dir, tmp_path_factory) -> Path:
    return build_training_json(segments_dir, tmp_path_factory.mktemp("dataset"))
