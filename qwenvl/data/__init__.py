"""Dataset registry: named training-JSON files, `name%pct` sampling, and the training format."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from qwenvl.answer import PROMPT, AnswerFormat

TRAINING_DIR = "qwen_video_dataset_training"
SPLIT_FILES = {"train": "train.json", "validation": "val.json", "test": "test.json"}

# Video paths inside each annotation file are relative to its data_path.
PHYSICAL_AI_DRIVING = {
    "annotation_path": f"{TRAINING_DIR}/train.json",
    "data_path": TRAINING_DIR,
}
PHYSICAL_AI_DRIVING_VAL = {
    "annotation_path": f"{TRAINING_DIR}/val.json",
    "data_path": TRAINING_DIR,
}
PHYSICAL_AI_DRIVING_TEST = {
    "annotation_path": f"{TRAINING_DIR}/test.json",
    "data_path": TRAINING_DIR,
}

data_dict = {
    "physical_ai_driving": PHYSICAL_AI_DRIVING,
    "physical_ai_driving_val": PHYSICAL_AI_DRIVING_VAL,
    "physical_ai_driving_test": PHYSICAL_AI_DRIVING_TEST,
}

_SAMPLING = re.compile(r"^(?P<name>.+?)(?:%(?P<pct>\d+(?:\.\d+)?))?$")


def parse_sampling(spec: str) -> tuple[str, float]:
    """'name%50' -> ('name', 0.5); 'name' -> ('name', 1.0)."""
    match = _SAMPLING.match(spec.strip())
    name, pct = match["name"], match["pct"]
    rate = float(pct) / 100 if pct is not None else 1.0
    if not 0 < rate <= 1:
        raise ValueError(f"{spec}: sampling percentage must be in (0, 100]")
    return name, rate


def dataset_specs(text: str) -> list[str]:
    """'a,b%50' (the --dataset_use syntax) -> ['a', 'b%50']."""
    return [spec.strip() for spec in text.split(",") if spec.strip()]


def data_list(specs: list[str]) -> list[dict]:
    """Resolve registry names or training-JSON paths, each optionally with `%pct`."""
    entries = []
    for spec in specs:
        name, rate = parse_sampling(spec)
        if name in data_dict:
            entry = dict(data_dict[name])
        elif name.endswith(".json"):
            if not Path(name).is_file():
                raise ValueError(f"{name}: training JSON not found")
            entry = {"annotation_path": name, "data_path": str(Path(name).parent)}
        else:
            known = ", ".join(sorted(data_dict))
            raise ValueError(f"unknown dataset '{name}'; known: {known}, or a path to a .json file")
        entry["sampling_rate"] = rate
        entries.append(entry)
    return entries


def answer_format_of(specs: list[str]) -> AnswerFormat:
    """The answer format the datasets were written with (answer_format.json beside each
    training JSON; the default for files without one). Datasets must agree."""
    found = {
        AnswerFormat.load(Path(entry["annotation_path"]).parent) or AnswerFormat()
        for entry in data_list(specs)
    }
    if len(found) > 1:
        raise ValueError(
            f"datasets written with different answer formats: {sorted(map(str, found))}"
        )
    return found.pop() if found else AnswerFormat()


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


def training_sample(row: dict, video: str) -> dict:
    """A Hugging Face dataset row in the training format, with `video` given relative."""
    return {
        "id": row["id"],
        "video": video,
        "fps": row["fps"],
        "conversations": [
            {"from": "human", "value": f"<video>\n{PROMPT}"},
            {"from": "gpt", "value": row["answer"]},
        ],
        "clip_id": row["clip_id"],
        "segment_index": row["segment_index"],
        "future_speed": row["future_speed"],
        "future_curvature": row["future_curvature"],
        "observed_speed": row["observed_speed"],
        "observed_curvature": row["observed_curvature"],
    }
