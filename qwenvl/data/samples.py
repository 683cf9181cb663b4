"""Read the training files a registry spec names: their samples, each dataset sampled by its
rate, and the settings (answer format, prompt) stored beside them."""

from __future__ import annotations

import json
import random
from pathlib import Path

from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings
from qwenvl.data import data_list
from qwenvl.files import StoredSettings


def stored_with(specs: list[str], settings: type[StoredSettings], what: str):
    """The `settings` stored beside the datasets' training files (None where none is); the
    datasets must agree, since one model trains on all of them."""
    found = {settings.load(Path(entry["annotation_path"]).parent) for entry in data_list(specs)}
    if len(found) > 1:
        raise ValueError(f"datasets written with different {what}: {sorted(map(str, found))}")
    return found.pop() if found else None


def answer_format_of(specs: list[str]) -> AnswerFormat:
    """The answer format the datasets were written with (the default for files without one)."""
    return stored_with(specs, AnswerFormat, "answer formats") or AnswerFormat()


def prompt_of(specs: list[str]) -> PromptSettings | None:
    """The prompt the datasets were written with; None for files that do not record it (a
    user's own training JSON), whose samples carry their prompt text alone."""
    return stored_with(specs, PromptSettings, "prompts")


def load_samples(specs: list[str], seed: int = 42) -> list[dict]:
    """All samples of the given datasets, each sampled by its rate, video paths made absolute."""
    samples = []
    for entry in data_list(specs):
        path = Path(entry["annotation_path"])
        if not path.is_file():
            raise ValueError(f"{path}: training JSON not found (run convert_to_training_format.py)")
        try:
            rows = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if entry["sampling_rate"] < 1:
            keep = max(1, round(len(rows) * entry["sampling_rate"]))
            rows = random.Random(seed).sample(rows, keep)
        for row in rows:
            row["video"] = str(Path(entry["data_path"]) / row["video"])
        samples.extend(rows)
    return samples
