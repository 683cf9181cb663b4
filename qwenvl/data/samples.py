"""The training files: writing them, and reading what a registry spec names.

Each split is written twice by convert_to_training_format.py: `train.json`, the seed guide's
format (a JSON list, one sample per line), which people read and which a user's own files
follow; and `train.arrow` beside it, the same samples as an Arrow file, which is what training
reads at scale. The Arrow file is memory-mapped, so a rank's memory does not grow with the
number of samples and the ranks of a node share the page cache; its small columns (frame
layout, text sizes, the answer's parse result) give every sample's token count and checks in
bulk without opening a video or parsing a sample. A JSON file without its Arrow file (a user's
own) is read whole, as the seed guide's code reads it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from qwenvl import record
from qwenvl.answer import AnswerFormat, AnswerParseError, parse_pairs
from qwenvl.chat import PromptSettings, answer_of, user_text_of
from qwenvl.data import data_list
from qwenvl.files import StoredSettings

STORE_SUFFIX = ".arrow"

STORE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("video", pa.string()),
        *record.arrow_fields(record.VIDEO),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        *record.arrow_fields(record.IDENTITY + record.LABELS),
        # Written with each sample, read in bulk at start-up: UTF-8 bytes of the user text and
        # of the answer (an upper bound of their tokens), and why the sample cannot train.
        *((name, pa.int64()) for name in ("user_bytes", "answer_bytes")),
        ("problem", pa.string()),
    ]
)
CHECK_COLUMNS = ("user_bytes", "answer_bytes", "problem")


def sample_problem(sample: dict, video: str | Path | None) -> str | None:
    """Why a sample cannot train, from the sample and its file alone (its pixels are checked as
    they are decoded): an answer that is not 30 pairs by the strict parser, a frame rate or
    frame count that is not positive, a video that is not there. None for a good sample."""
    try:
        parse_pairs(answer_of(sample))
    except AnswerParseError as err:
        return f"answer: {err}"
    except (KeyError, IndexError, TypeError, AttributeError):
        return "no human/gpt conversation"
    for name in ("fps", "frames"):
        value = sample.get(name)
        if value is not None and not (isinstance(value, int | float) and value > 0):
            return f"{name} {value} is not positive"
    if video is None:
        return "no video path"
    if not Path(video).is_file():
        return "video not found"
    return None


def with_checks(sample: dict, video: str | Path | None) -> dict:
    """The sample with its check columns (CHECK_COLUMNS)."""
    try:
        user, answer = user_text_of(sample), answer_of(sample)
    except (KeyError, IndexError, TypeError, AttributeError):
        user = answer = ""
    return {
        **sample,
        "user_bytes": len(str(user).encode()),
        "answer_bytes": len(str(answer).encode()),
        "problem": sample_problem(sample, video),
    }


def write_training_file(path: Path, batches: Iterable[list[tuple[dict, str]]]) -> Counter:
    """Write training-format samples, batch by batch, as `path` (JSON) and its Arrow store
    beside it; memory holds one batch. A batch holds (sample, its video's absolute path), the
    path for the checks the store records. Returns the count of samples by problem (None for
    the good ones)."""
    store = path.with_suffix(STORE_SUFFIX)
    count, problems = 0, Counter()
    with pa.OSFile(str(store), "wb") as sink, pa.ipc.new_file(sink, STORE_SCHEMA) as writer:
        with open(path, "w") as out:
            out.write("[")
            for batch in batches:
                for sample, _ in batch:
                    out.write(",\n" if count else "\n")
                    out.write(json.dumps(sample))
                    count += 1
                if batch:
                    rows = [with_checks(sample, video) for sample, video in batch]
                    problems.update(row["problem"] for row in rows)
                    writer.write_table(pa.Table.from_pylist(rows, schema=STORE_SCHEMA))
            out.write("\n]\n" if count else "]\n")
        # The store is finished after the JSON is closed: a store older than its JSON means
        # the JSON was edited since.
    return problems


def _open_store(path: Path) -> pa.Table:
    """The store's table, memory-mapped: rows are read from the page cache as they are used."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def store_of(path: Path) -> pa.Table | None:
    """The Arrow store written with the JSON at `path`, or None when there is none or the JSON
    changed since (then the JSON is what the user means)."""
    store = path.with_suffix(STORE_SUFFIX)
    if not store.is_file():
        return None
    if path.is_file() and path.stat().st_mtime_ns > store.stat().st_mtime_ns:
        print(f"note: {path} changed after {store.name} was written; reading the JSON")
        return None
    return _open_store(store)


@dataclass
class _Part:
    """One training file: its rows (an Arrow table or a parsed list) and its data path."""

    rows: pa.Table | list[dict]
    data_path: str

    def sample(self, row: int) -> dict:
        if isinstance(self.rows, pa.Table):
            sample = self.rows.slice(row, 1).to_pylist()[0]
        else:
            sample = dict(self.rows[row])
        for key in CHECK_COLUMNS:
            sample.pop(key, None)
        sample["video"] = str(Path(self.data_path) / sample["video"])
        return sample

    def column(self, name: str, fill) -> np.ndarray:
        """A small per-sample column in bulk (the store's, or gathered from the parsed list);
        `fill` where a sample lacks it."""
        if isinstance(self.rows, pa.Table):
            return self.rows.column(name).to_numpy(zero_copy_only=False)
        return np.array([row.get(name, fill) for row in self.rows])


class Samples(Sequence):
    """The samples of some training files, in order, read lazily: an index per sample (which
    file, which row), never a Python object per sample until one is asked for."""

    def __init__(self, parts: list[_Part], part_of: np.ndarray, row_of: np.ndarray) -> None:
        self.parts, self.part_of, self.row_of = parts, part_of, row_of

    def __len__(self) -> int:
        return len(self.row_of)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.subset(np.arange(len(self))[index])
        return self.parts[self.part_of[index]].sample(int(self.row_of[index]))

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def subset(self, indices: np.ndarray) -> Samples:
        """The samples at `indices` (positions in this sequence), in that order."""
        return Samples(self.parts, self.part_of[indices], self.row_of[indices])

    def column(self, name: str, fill=-1) -> np.ndarray:
        """A small per-sample column (frames, width, height, fps, or one of CHECK_COLUMNS) of
        every sample, in bulk; `fill` where a sample of a JSON file lacks it."""
        out = None
        for number, part in enumerate(self.parts):
            mine = self.part_of == number
            if not mine.any():
                continue
            values = part.column(name, fill)[self.row_of[mine]]
            if out is None:
                out = np.empty(len(self), dtype=values.dtype if values.dtype != object else object)
            out[mine] = values
        return out if out is not None else np.empty(0)


def _json_part(path: Path, data_path: str) -> _Part:
    try:
        rows = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: not a list of samples")
    for number, row in enumerate(rows):
        name = f"{path.name} sample {number}"
        if not isinstance(row, dict):
            rows[number] = {"id": name, "problem": "not a JSON object"}
            continue
        row.setdefault("id", name)
        video = row.get("video")
        rows[number] = with_checks(row, Path(data_path) / video if isinstance(video, str) else None)
    return _Part(rows, data_path)


def load_samples(specs: list[str], seed: int = 42) -> Samples:
    """The samples of the given datasets, each sampled by its rate (the same subset and order
    for a seed as random.sample of the whole list), video paths made absolute."""
    parts, part_of, row_of = [], [], []
    for entry in data_list(specs):
        path = Path(entry["annotation_path"])
        table = store_of(path)
        if table is None and not path.is_file():
            raise ValueError(f"{path}: training JSON not found (run convert_to_training_format.py)")
        part = _Part(table, entry["data_path"]) if table is not None else None
        part = part or _json_part(path, entry["data_path"])
        count = len(part.rows)
        rows = np.arange(count, dtype=np.int64)
        if entry["sampling_rate"] < 1:
            keep = max(1, round(count * entry["sampling_rate"]))
            rows = np.array(random.Random(seed).sample(range(count), keep), dtype=np.int64)
        part_of.append(np.full(len(rows), len(parts), dtype=np.int32))
        row_of.append(rows)
        parts.append(part)
    if not parts:
        return Samples([], np.empty(0, np.int32), np.empty(0, np.int64))
    return Samples(parts, np.concatenate(part_of), np.concatenate(row_of))


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
