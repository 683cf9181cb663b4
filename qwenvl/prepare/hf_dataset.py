"""The Hugging Face dataset of a segment manifest: one chat row per segment, grouped by split,
built batch by batch from the manifest's columns, so memory holds one batch whatever the size
of the dataset."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, Features
from datasets.arrow_writer import ArrowWriter

from qwenvl import record
from qwenvl.answer import AnswerFormat
from qwenvl.chat import ROW_SCHEMA, PromptSettings, dataset_table
from qwenvl.files import missing_files
from qwenvl.prepare.splits import SPLITS

FEATURES = Features.from_arrow_schema(ROW_SCHEMA)
SHARD = "data-00000-of-00001.arrow"  # the one shard of a split, as save_to_disk names it


def _describe_shard(split_dir: Path) -> None:
    """Write the state and info files load_from_disk reads beside a split's shard, as
    save_to_disk would: the rows were written in place, so they are not copied a second time
    (which at a million rows is gigabytes read and written again)."""
    shard = Dataset.from_file(str(split_dir / SHARD))  # memory-mapped: only its schema is read
    with tempfile.TemporaryDirectory(dir=split_dir.parent) as empty:
        shard.select([]).save_to_disk(empty, num_shards=1)
        for name in ("state.json", "dataset_info.json"):
            shutil.copyfile(Path(empty) / name, split_dir / name)


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
    writers = {}
    for name in SPLITS:
        (output_dir / name).mkdir(parents=True)
        writers[name] = ArrowWriter(features=FEATURES, path=str(output_dir / name / SHARD))
    clips: dict[str, set] = {name: set() for name in SPLITS}
    missing, listings = 0, {}
    wanted = pa.schema([*record.arrow_fields(record.FIELDS), ("video", pa.string())])
    for batch in pq.ParquetFile(manifest).iter_batches(batch_size=batch_size, columns=wanted.names):
        # As the record declares them (pandas writes strings as large_string, say).
        table = pa.Table.from_batches([batch]).select(wanted.names).cast(wanted)
        split_of = np.array([assignment[clip] for clip in table["clip_id"].to_pylist()])
        for name in SPLITS:
            part = table.filter(pa.array(split_of == name))
            if not part.num_rows:
                continue
            videos = pc.binary_join_element_wise(root, part["video"], "/")
            missing += int(missing_files(videos.to_pylist(), listings).sum())
            records = part.select([f.name for f in record.FIELDS])
            rows = dataset_table(records, videos.combine_chunks(), prompt, answer_format)
            writers[name].write_table(rows)
            clips[name].update(pc.unique(part["clip_id"]).to_pylist())
        progress(batch.num_rows)
    counts = {name: writers[name].finalize()[0] for name in SPLITS}
    for name in SPLITS:
        _describe_shard(output_dir / name)
    (output_dir / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}))
    if missing:
        print(
            f"warning: {missing} segment videos of the manifest are missing (training and "
            "evaluation leave them out)"
        )
    return {name: (len(clips[name]), counts[name]) for name in SPLITS}
