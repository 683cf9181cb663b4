"""Resuming after a crash: the newest checkpoint whose every file reads back complete; one left
half-written by the crash is reported and skipped."""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def safetensors_complete(path: Path) -> bool:
    """True when the file is as long as its header says: a crash mid-write leaves it short."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return False
        header_len = int.from_bytes(head, "little")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            return False
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return path.stat().st_size == 8 + header_len + max(ends, default=0)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory is not complete, or None when every file in it reads back."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text())
    except ValueError:
        return "trainer_state.json is truncated"
    for file in sorted(path.rglob("*")):
        if file.suffix == ".safetensors" and not safetensors_complete(file):
            return f"{file.relative_to(path)} is truncated"
        elif file.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(file):
            return f"{file.relative_to(path)} is truncated"
    return None


def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint-* in output_dir; incomplete ones are reported and skipped."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir():
            found.append((int(match[1]), child))
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping incomplete checkpoint %s: %s", path, problem)
    return None
