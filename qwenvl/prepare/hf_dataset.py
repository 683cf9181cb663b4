"""The Hugging Face dataset of a segment manifest: one chat row per segment, grouped by split,
built batch by batch from the manifest's columns, so memory holds one batch whatever the size
of the dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, Features
from datasets.arrow_writer import ArrowWriter

from qwenvl import record
from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings, dataset_row
from qwenvl.prepare.splits import SPLITS

_CONTENT = pa.struct(
    [("type", pa.string()), ("video", pa.string()), ("fps", pa.float64()), ("text", pa.string())]
)
# The columns of chat.dataset_row, in its order.
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        *record.arrow_fields(record.IDENTITY),
        ("video", pa.string()),
        *record.arrow_fields(record.VIDEO),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(_CONTENT))]))),
        ("answer", pa.string()),
        *record.arrow_fields(record.LABELS),
    ]
)
FEATURES = Features.from_arrow_schema(ROW_SCHEMA)


def build_dataset(
    manifest: Path,
    segments_dir: Path,
    assignment: dict[str, str],
    prompt: PromptSettings,
    answer_format: AnswerFormat,
    output_dir: Path,
    progress: Callable[[int], None] = lambda rows: None,
    batch_size: int = 4096,
) -> dict[str, tuple[int, int]]:
    """Write the DatasetDict (train / validation / test by `assignment`, clip_id -> split) to
    `output_dir`; video paths are absolute so it can be read from anywhere. Returns, per split,
    (clips, segments)."""
    root = str(segments_dir.resolve())
    scratch = output_dir / ".rows"
    scratch.mkdir(parents=True)
    writers = {name: ArrowWriter(features=FEATURES, path=str(scratch / name)) for name in SPLITS}
    clips: dict[str, set] = {name: set() for name in SPLITS}
    for batch in pq.ParquetFile(manifest).iter_batches(batch_size=batch_size):
        rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
        for row in batch.to_pylist():
            split = assignment[row["clip_id"]]
            rows[split].append(dataset_row(row, f"{root}/{row['video']}", prompt, answer_format))
            clips[split].add(row["clip_id"])
        for name, split_rows in rows.items():
            if split_rows:
                writers[name].write_table(pa.Table.from_pylist(split_rows, schema=ROW_SCHEMA))
        progress(batch.num_rows)
    counts = {name: writers[name].finalize()[0] for name in SPLITS}
    splits = {name: Dataset.from_file(str(scratch / name)) for name in SPLITS}
    DatasetDict(splits).save_to_disk(str(output_dir), num_shards={name: 1 for name in SPLITS})
    for path in scratch.iterdir():
        path.unlink()
    scratch.rmdir()
    return {name: (len(clips[name]), counts[name]) for name in SPLITS}
