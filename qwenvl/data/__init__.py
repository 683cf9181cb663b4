"""Stage 2, data. This module is the dataset registry users know from qwen-vl-finetune: named
training files and `name%pct` sampling. Reading them is in samples, the tokenised training
dataset in dataset, batching in collator."""

from __future__ import annotations

import re
from pathlib import Path

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
