"""Split the segments into train / validation / test by clip, never by segment: the dataset's
official split, or a seeded one for data without it."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
