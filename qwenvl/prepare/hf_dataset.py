"""The Hugging Face dataset of a segment manifest: one chat row per segment, grouped by split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings, dataset_row
from qwenvl.prepare.splits import SPLITS


def build_split_rows(
    manifest: pd.DataFrame,
    segments_dir: Path,
    assignment: dict[str, str],
    prompt: PromptSettings,
    answer_format: AnswerFormat,
) -> dict[str, list[dict]]:
    """Rows per split (clip_id -> split in `assignment`); video paths are absolute so the
    dataset can be read from anywhere."""
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for _, row in manifest.iterrows():
        video = str((segments_dir / row["video"]).resolve())
        rows[assignment[row["clip_id"]]].append(dataset_row(row, video, prompt, answer_format))
    return rows
