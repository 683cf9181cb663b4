#!/usr/bin/env python
"""Write train.json, val.json and test.json in the training format from the Hugging Face dataset.

Each sample: {"id", "video", "fps", "conversations": [human "<video>\\n<prompt>", gpt answer]}
plus the segment's record (video layout, labels). Video paths are relative to the folder the JSON
files are in. Beside each JSON goes its Arrow file (train.arrow, ...), the same samples as
training reads them at scale. Works batch by batch: memory does not grow with the dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from datasets import load_from_disk
from tqdm import tqdm

from qwenvl import record
from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings, training_table
from qwenvl.cli import UserError, run_script
from qwenvl.data import SPLIT_FILES
from qwenvl.data.samples import write_training_file
from qwenvl.files import atomic_output_dir, check_apart
from qwenvl.layout import OLD_SEGMENTS_SOURCE, SEGMENTS_SOURCE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input-dir", required=True, help="DatasetDict from prepare_huggingface_dataset.py"
    )
    parser.add_argument(
        "--output-dir", required=True, help="where train.json, val.json, test.json go"
    )
    parser.add_argument(
        "--overwrite-output", action="store_true", help="replace an existing output directory"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    segments = segments_of(Path(args.input_dir))
    check_apart(args.output_dir, {"--input-dir": args.input_dir, "its segments": segments})
    try:
        dataset = load_from_disk(args.input_dir)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"{args.input_dir}: not a saved DatasetDict ({err})") from None
    try:
        answer_format = AnswerFormat.load(args.input_dir)
        prompt = PromptSettings.load(args.input_dir)
    except ValueError as err:
        raise UserError(str(err)) from None
    if answer_format is None:
        answer_format = AnswerFormat()
        print(f"note: {args.input_dir} records no answer format; assuming {answer_format}")
    output_dir = Path(args.output_dir).resolve()
    counts = {}
    with atomic_output_dir(output_dir, args.overwrite_output) as tmp:
        for split, filename in SPLIT_FILES.items():
            rows = dataset[split] if split in dataset else None
            with tqdm(total=len(rows or ()), desc=f"converting {split}", unit="sample") as bar:
                problems = write_training_file(
                    tmp / filename, batches(rows, output_dir, bar), prompt
                )
            counts[filename] = problems.total()
            warn_problems(filename, problems)
        answer_format.save(tmp)
        if prompt is not None:
            prompt.save(tmp)
    summary = ", ".join(f"{name} {n}" for name, n in counts.items())
    print(f"{summary} samples -> {output_dir}")
    return 0


def segments_of(dataset_dir: Path) -> str | None:
    """The segments folder a dataset was built from (its rows point at their videos)."""
    for name in (SEGMENTS_SOURCE, OLD_SEGMENTS_SOURCE):
        source = dataset_dir / name
        if source.is_file():
            try:
                return json.loads(source.read_text())["segments_dir"]
            except (ValueError, KeyError, TypeError):
                continue
    return None


def batches(rows, output_dir: Path, bar: tqdm, size: int = 8192) -> Iterator[tuple]:
    """(training samples, their videos' paths) batch by batch, read from the memory-mapped
    dataset: memory holds one batch, whatever the number of rows."""
    if rows is None:
        return
    relative: dict[str, str] = {}  # a video folder -> the same relative to output_dir

    def moved(video: str) -> str:
        folder, name = os.path.split(video)
        if folder not in relative:
            relative[folder] = os.path.relpath(folder, output_dir)
        return f"{relative[folder]}/{name}"

    for table in read_in_batches(rows, size):
        table = record.with_views(table)
        videos = table["video"].to_pylist()
        paths = pa.array([moved(v) for v in videos], pa.string())
        bar.update(table.num_rows)
        if not pc.any(pc.greater(pc.list_value_length(table["extra_videos"]), 0)).as_py():
            yield training_table(table, paths), [[v] for v in videos]
            continue
        extras = table["extra_videos"].to_pylist()  # several cameras: each view's path moved
        column = table.column_names.index("extra_videos")
        moved_extras = pa.array([[moved(v) for v in e] for e in extras], pa.list_(pa.string()))
        table = table.set_column(column, "extra_videos", moved_extras)
        yield training_table(table, paths), [[v, *e] for v, e in zip(videos, extras, strict=True)]


def read_in_batches(rows, size: int) -> Iterator[pa.Table]:
    """The rows of a saved split in tables of about `size` rows, read from its files as
    streams: memory holds a batch, where the memory-mapped table would keep every page read."""
    pending, count = [], 0
    for cache in rows.cache_files:
        with pa.OSFile(cache["filename"]) as source:
            for batch in pa.ipc.open_stream(source):
                pending.append(batch)
                count += batch.num_rows
                if count >= size:
                    yield pa.Table.from_batches(pending)
                    pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def warn_problems(filename: str, problems: Counter) -> None:
    """One line per kind of sample that training will leave out, with its count."""
    for problem, count in sorted((p, n) for p, n in problems.items() if p is not None):
        print(f"warning: {filename}: {count} samples: {problem} (training leaves them out)")


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
