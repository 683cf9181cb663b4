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
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from qwenvl import record
from qwenvl.answer import AnswerFormat, AnswerParseError, parse_pairs
from qwenvl.chat import (
    SAMPLE_SCHEMA,
    VIDEO_TAG,
    PromptSettings,
    answer_of,
    human_of,
    user_text_of,
)
from qwenvl.data import data_list
from qwenvl.files import StoredSettings, atomic_write_text, file_folders, missing_files
from qwenvl.task import HORIZON_PAIRS

STORE_SUFFIX = ".arrow"
TIE_SUFFIX = ".arrow.json"  # beside the store: the JSON content it holds

# The training sample's columns, and the checks written with each: UTF-8 bytes of the user
# text and of the answer (upper bounds of their tokens), and why the sample cannot train.
CHECK_COLUMNS = ("user_bytes", "answer_bytes", "problem")
STORE_SCHEMA = pa.schema(
    [
        *SAMPLE_SCHEMA,
        ("user_bytes", pa.int64()),
        ("answer_bytes", pa.int64()),
        ("problem", pa.string()),
    ]
)
# What parse_pairs accepts, as RE2 reads it: a sample it matches parses; one it does not is
# judged by parse_pairs itself (Unicode digits and spaces, overlong numbers and the like).
_NUMBER = r"-?\d+(?:\.\d+)?"
_OVERLONG = r"\d{300}"  # a number that long may overflow to inf: parse_pairs judges it
_PAIR = rf"\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)"
_ANSWER = rf"^\s*\[\s*{_PAIR}(?:\s*,\s*{_PAIR}){{{HORIZON_PAIRS - 1}}}\s*\]\s*$"


def sample_problem(sample: dict, video: str | Path | None, *extra: str | Path) -> str | None:
    """Why a sample cannot train, from the sample and its files alone (its pixels are checked as
    they are decoded): an answer that is not 30 pairs by the strict parser, a frame rate or
    frame count that is not positive, a user turn whose <video> tags are not its videos, a video
    (of any view) that is not there. None for a good sample."""
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
    layouts = [len(sample.get(f"extra_{n}") or ()) for n in ("frames", "widths", "heights", "fps")]
    if any(count != len(extra) for count in layouts):
        return f"{len(extra)} further views but layouts of {layouts}"
    tags = human_of(sample).count(VIDEO_TAG)
    if tags != 1 + len(extra):
        return f"{tags} <video> tags for {1 + len(extra)} videos"
    if not Path(video).is_file() or not all(Path(v).is_file() for v in extra):
        return "video not found"
    return None


def with_checks(sample: dict, video: str | Path | None, *extra: str | Path) -> dict:
    """A sample with its check columns (CHECK_COLUMNS)."""
    try:
        human, answer = sample["conversations"][0]["value"], answer_of(sample)
    except (KeyError, IndexError, TypeError):
        human = answer = ""
    return {
        **sample,
        "user_bytes": len(str(human).encode()),
        "answer_bytes": len(str(answer).encode()),
        "problem": sample_problem(sample, video, *extra),
    }


def checked_table(samples: pa.Table, videos: list[list[str]], listings: dict) -> pa.Table:
    """Training samples (SAMPLE_SCHEMA) with their checks (STORE_SCHEMA), in bulk: the samples
    the vectorised checks pass are good by sample_problem's rules; the rest are judged by it.
    `videos` holds each sample's videos (every view's), absolute."""
    turns = pc.list_flatten(samples["conversations"].combine_chunks())
    values = pc.struct_field(turns, "value")
    human = pc.take(values, pa.array(np.arange(0, len(values), 2)))
    answer = pc.take(values, pa.array(np.arange(1, len(values), 2)))
    good = pc.and_(
        pc.match_substring_regex(answer, _ANSWER),
        pc.invert(pc.match_substring_regex(answer, _OVERLONG)),
    ).to_numpy(zero_copy_only=False)
    for name in ("fps", "frames"):
        good &= pc.greater(samples[name], 0).to_numpy(zero_copy_only=False)
    views = np.array([len(v) for v in videos], dtype=np.int64)
    if len(views):
        missing = missing_files([path for v in videos for path in v], listings)
        good &= np.add.reduceat(missing, np.cumsum([0, *views[:-1]])) == 0
        good &= pc.count_substring(human, VIDEO_TAG).to_numpy(zero_copy_only=False) == views
        for name in ("extra_frames", "extra_widths", "extra_heights", "extra_fps"):
            counts = pc.list_value_length(samples[name]).fill_null(0).to_numpy(zero_copy_only=False)
            good &= counts == views - 1
    problems = [None] * samples.num_rows
    for i in np.flatnonzero(~good):
        problems[i] = sample_problem(samples.slice(i, 1).to_pylist()[0], *videos[i])
    columns = [
        *samples.columns,
        pc.binary_length(human).cast(pa.int64()),
        pc.binary_length(answer).cast(pa.int64()),
        pa.array(problems, pa.string()),
    ]
    return pa.table(columns, schema=STORE_SCHEMA)


def write_training_file(
    path: Path,
    batches: Iterable[tuple[pa.Table, list[list[str]]]],
    prompt: PromptSettings | None,
) -> Counter:
    """Write training samples, batch by batch, as `path` (JSON, one sample per line) and its
    Arrow store beside it; memory holds one batch. A batch is a table of samples
    (SAMPLE_SCHEMA) and each one's videos (every view's, absolute), for the checks the store
    records.

    The store is tied to its JSON by content: it records the JSON's size and hash (and the
    prompt it was written with), and is used only while they still hold (store_of). Returns the
    count of samples by problem (None for the good ones)."""
    store = path.with_suffix(STORE_SUFFIX)
    tmp_store = store.with_name(f".{store.name}.tmp-{os.getpid()}")
    count, problems, listings = 0, Counter(), {}
    digest = xxhash.xxh3_128()

    def emit(text: str) -> None:
        data = text.encode()
        digest.update(data)
        out.write(data)

    with pa.OSFile(str(tmp_store), "wb") as sink, pa.ipc.new_file(sink, STORE_SCHEMA) as writer:
        with open(path, "wb") as out:
            emit("[")
            for samples, videos in batches:
                for sample in samples.to_pylist():
                    emit(",\n" if count else "\n")
                    # orjson writes floats ten times faster than json (each parses back to
                    # the same float): at a million samples, a minute saved.
                    emit(orjson.dumps(sample).decode())
                    count += 1
                if samples.num_rows:
                    table = checked_table(samples, videos, listings)
                    problems.update(table["problem"].to_pylist())
                    writer.write_table(table)
            emit("\n]\n" if count else "]\n")
            size = out.tell()
    tie = {"json_bytes": size, "json_xxh3": digest.hexdigest(), "prompt": _prompt_text(prompt)}
    _write_tie(tmp_store, store, tie)
    return problems


def _prompt_text(prompt: PromptSettings | None) -> str:
    return json.dumps(asdict(prompt), sort_keys=True) if prompt is not None else ""


def _write_tie(written: Path, store: Path, tie: dict) -> None:
    """Move the written store to its place with the tie to its JSON in a small file beside it
    (STORE_TIE): Arrow's footer cannot take metadata after the batches are written."""
    atomic_write_text(store.with_suffix(TIE_SUFFIX), json.dumps(tie) + "\n")
    written.replace(store)


_HASHES: dict[tuple, str] = {}


def file_hash(path: Path) -> str:
    """xxh3-128 of a file's bytes, read in blocks (gigabytes a second); once per process for
    a file that has not changed since."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _HASHES:
        digest = xxhash.xxh3_128()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _open_store(path: Path) -> pa.Table:
    """The store's table, memory-mapped: rows are read from the page cache as they are used."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def store_tie(path: Path) -> dict | None:
    """What the store beside the JSON at `path` was written from (its JSON's size and hash, the
    prompt), or None when there is no store or it records nothing."""
    tie = path.with_suffix(TIE_SUFFIX)
    if not path.with_suffix(STORE_SUFFIX).is_file() or not tie.is_file():
        return None
    try:
        return json.loads(tie.read_text())
    except ValueError:
        return None


def store_of(path: Path) -> pa.Table | None:
    """The Arrow store written with the JSON at `path`, or None when there is none or it was not
    written from this JSON's content (an edited JSON, another dataset's store copied in): then
    the JSON is what the user means. ValueError when the store cannot be read, or when the
    folder's prompt.json is not the prompt the samples were written with."""
    store = path.with_suffix(STORE_SUFFIX)
    if not store.is_file():
        return None
    tie = store_tie(path)
    if tie is None or not path.is_file() or not _same_content(path, tie):
        why = (
            "records no JSON content (convert_to_training_format.py writes one that does)"
            if tie is None
            else f"was not written from this {path.name}"
        )
        print(f"note: {store.name} {why}; reading {path} whole")
        return None
    stored_prompt = PromptSettings.load(path.parent)
    if tie.get("prompt", "") != _prompt_text(stored_prompt):
        raise ValueError(
            f"{path.parent / PromptSettings.FILE}: not the prompt {path.name} was written with "
            "(rebuild the training files, or restore it)"
        )
    try:
        return _open_store(store)
    except (OSError, pa.ArrowInvalid) as err:
        raise ValueError(
            f"{store}: cannot be read ({str(err).splitlines()[0]}); delete it and "
            f"{path.name} is read instead"
        ) from None


def _same_content(path: Path, tie: dict) -> bool:
    """Whether the JSON is the one the store was written from: same size, then same hash."""
    if path.stat().st_size != tie.get("json_bytes"):
        return False
    return file_hash(path) == tie.get("json_xxh3")


def dataset_fingerprints(specs: list[str]) -> list[dict]:
    """What a run trains on, for its checkpoints' record: each dataset as named, its training
    file and the hash of that file's content."""
    return [
        {
            "dataset": spec,
            "file": str(Path(entry["annotation_path"]).resolve()),
            "xxh3": file_hash(Path(entry["annotation_path"])),
        }
        for spec, entry in zip(specs, data_list(specs), strict=True)
    ]


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
        if sample.get("extra_videos"):
            sample["extra_videos"] = [str(Path(self.data_path) / v) for v in sample["extra_videos"]]
        return sample

    def column(self, name: str, fill) -> np.ndarray:
        """A small per-sample column in bulk (the store's, or gathered from the parsed list);
        `fill` where a sample lacks it."""
        if isinstance(self.rows, pa.Table):
            return self.rows.column(name).to_numpy(zero_copy_only=False)
        return np.array([row.get(name, fill) for row in self.rows])

    def lists(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A list column in bulk: every row's values one after the other, and each row's
        count (none for rows, or a store, without it)."""
        if isinstance(self.rows, pa.Table):
            if name not in self.rows.column_names:
                return np.empty(0), np.zeros(len(self.rows), dtype=np.int64)
            column = self.rows.column(name).combine_chunks()
            counts = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
            return pc.list_flatten(column).to_numpy(zero_copy_only=False), counts
        values = [row.get(name) or [] for row in self.rows]
        counts = np.array([len(v) for v in values], dtype=np.int64)
        return np.array([x for v in values for x in v]), counts


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

    def lists(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A small list column (extra_frames, extra_widths, ...) of every sample in bulk, in
        sample order: every sample's values one after the other, and each sample's count."""
        flats, base = [], 0
        counts = np.zeros(len(self), dtype=np.int64)
        firsts = np.zeros(len(self), dtype=np.int64)
        for number, part in enumerate(self.parts):
            flat, sizes = part.lists(name)
            starts = np.concatenate([[0], np.cumsum(sizes)])[:-1] + base
            mine = self.part_of == number
            counts[mine] = sizes[self.row_of[mine]]
            firsts[mine] = starts[self.row_of[mine]]
            flats.append(flat)
            base += len(flat)
        if not counts.any():
            return np.empty(0), counts
        flat = np.concatenate(flats)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return flat[np.repeat(firsts, counts) + within], counts


def mean_pairs(samples: Samples, when: str) -> np.ndarray:
    """The mean (30, 2) speed and curvature of every sample (`when`: "future" or "observed"),
    summed in chunks of the stored columns: no Python object per sample."""
    total, count = 0.0, 0
    for number, part in enumerate(samples.parts):
        rows = samples.row_of[samples.part_of == number]
        if isinstance(part.rows, pa.Table):
            weights = np.bincount(rows, minlength=len(part.rows)).astype(np.float64)
            start = 0
            for batch in part.rows.select([f"{when}_speed", f"{when}_curvature"]).to_batches(
                max_chunksize=65536
            ):
                pairs = np.stack(
                    [
                        pc.list_flatten(column).to_numpy().reshape(batch.num_rows, -1)
                        for column in batch.columns
                    ],
                    axis=-1,
                )
                total = total + np.tensordot(weights[start : start + batch.num_rows], pairs, 1)
                start += batch.num_rows
        else:
            total = total + sum(record.pairs(part.rows[row], when) for row in rows)
        count += len(rows)
    return np.asarray(total, dtype=np.float64) / max(count, 1)


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
        video, extra = row.get("video"), row.get("extra_videos") or []
        if isinstance(video, str) and all(isinstance(v, str) for v in extra):
            views = [Path(data_path) / v for v in (video, *extra)]
        else:
            views = [None]
        rows[number] = with_checks(row, *views)
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


def prompt_of_samples(samples: Samples) -> PromptSettings | None:
    """The prompt of training files that record none (a user's own JSON): their one user text
    as the instruction, when every sample shares it; None when they differ (then no prompt can
    be rebuilt for prediction, and a checkpoint trained on them says so)."""
    texts = set()
    for number, part in enumerate(samples.parts):
        rows = samples.row_of[samples.part_of == number]
        if isinstance(part.rows, pa.Table):
            return None  # a store is written with its prompt.json: prompt_of finds that
        for row in rows:
            try:
                texts.add(user_text_of(part.rows[row]))
            except (KeyError, IndexError, TypeError, AttributeError):
                return None
            if len(texts) > 1:
                return None
    return PromptSettings(instruction=texts.pop()) if texts else None


def video_folders_of(path: Path, data_path: str) -> set[str]:
    """The folders of a training file's videos (absolute, normalised), from its store's video
    column where it has its own store, else from the JSON: a million samples' paths cost
    their folders' joins."""
    table = None
    try:
        table = store_of(path)
    except ValueError:
        table = None
    if table is not None:
        videos = table.column("video").combine_chunks()
        if "extra_videos" in table.column_names:
            extra = pc.list_flatten(table.column("extra_videos").combine_chunks())
            videos = pa.concat_arrays([videos, extra.cast(videos.type)])
        folders = pc.unique(pc.replace_substring_regex(videos, r"(^|/)[^/]*$", "")).to_pylist()
        return file_folders([os.path.join(folder, "x") for folder in folders], data_path)
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(rows, list):
        return set()
    rows = [row for row in rows if isinstance(row, dict)]
    videos = [row.get("video") for row in rows]
    videos += [v for row in rows for v in (row.get("extra_videos") or [])]
    return file_folders(videos, data_path)
