"""Build chat rows from the segment manifest and split them by clip, never by segment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qwenvl.answer import PROMPT, AnswerFormat
from qwenvl.prep import segment_id

SPLITS = ("train", "validation", "test")
# The dataset's official split names (clip_index.parquet's `split`) -> ours.
OFFICIAL_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def split_clips(
    clip_ids: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """clip_id -> split name; deterministic for a seed. Segments of a clip share scenes, so a
    clip goes whole to one split. Each non-zero fraction gets at least one clip when possible."""
    clips = sorted(set(clip_ids))
    order = np.random.default_rng(seed).permutation(len(clips))
    n_test = _count(len(clips), test_fraction, available=len(clips) - 1)
    n_val = _count(len(clips), val_fraction, available=len(clips) - n_test - 1)
    assignment = {}
    for rank, i in enumerate(order):
        split = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
        assignment[clips[i]] = split
    return assignment


def _count(total: int, fraction: float, available: int) -> int:
    """Clips for a split of `fraction`: at least one when asked for, never all of them."""
    if fraction <= 0 or available <= 0:
        return 0
    return min(available, max(1, round(total * fraction)))


def chat_row(row: pd.Series, video_path: str, answer_format: AnswerFormat) -> dict:
    """One dataset row: the chat `messages` (video, prompt, answer) and the numeric labels."""
    future = list(zip(row["future_speed"], row["future_curvature"], strict=True))
    answer = answer_format.format(future)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": video_path, "fps": float(row["fps"]), "text": None},
                {"type": "text", "text": PROMPT, "video": None, "fps": None},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": answer, "video": None, "fps": None}],
        },
    ]
    return {
        "id": segment_id(row["clip_id"], int(row["segment_index"])),
        "clip_id": row["clip_id"],
        "segment_index": int(row["segment_index"]),
        "video": video_path,
        "fps": float(row["fps"]),
        "messages": messages,
        "answer": answer,
        "future_speed": [float(v) for v in row["future_speed"]],
        "future_curvature": [float(c) for c in row["future_curvature"]],
        "observed_speed": [float(v) for v in row["observed_speed"]],
        "observed_curvature": [float(c) for c in row["observed_curvature"]],
    }


def official_assignment(labels: pd.Series) -> dict[str, str]:
    """clip_id -> our split name from the dataset's official labels (train / val / test).

    ValueError names a clip without a label or with a label outside the three.
    """
    assignment = {}
    for clip_id, label in labels.items():
        if label is None or (isinstance(label, float) and np.isnan(label)):
            raise ValueError(f"clip {clip_id} has no official split")
        if label not in OFFICIAL_SPLITS:
            raise ValueError(f"clip {clip_id}: unknown split '{label}' (expected train/val/test)")
        assignment[str(clip_id)] = OFFICIAL_SPLITS[label]
    return assignment


def build_split_rows(
    manifest: pd.DataFrame,
    segments_dir: Path,
    assignment: dict[str, str],
    answer_format: AnswerFormat,
) -> dict[str, list[dict]]:
    """Rows per split (clip_id -> split in `assignment`); video paths are absolute so the
    dataset can be read from anywhere."""
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for _, row in manifest.iterrows():
        video = str((segments_dir / row["video"]).resolve())
        rows[assignment[row["clip_id"]]].append(chat_row(row, video, answer_format))
    return rows
