"""The Hugging Face dataset of a segment manifest: one chat row per segment, grouped by split,
built batch by batch from the manifest's columns, so memory holds one batch whatever the size
of the dataset; with an ego history in the prompt, each segment's read from its clip's
egomotion."""

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
from qwenvl.prepare.labels import MotionInterpolator, ego_history
from qwenvl.prepare.rawdata import MissingClipData, RawDataset
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


class HistoryReader:
    """The ego history of each segment, from its clip's egomotion in the raw dataset (read once
    per clip, the clips coming in the manifest's order)."""

    def __init__(self, raw: RawDataset, prompt: PromptSettings) -> None:
        self.raw, self.prompt = raw, prompt
        self._clip: tuple[str, MotionInterpolator | str] | None = None

    def history(self, clip_id: str, chunk: int, last_frame_us: int) -> np.ndarray:
        """(history_pairs, 2) of one segment; ValueError saying why there is none."""
        if self._clip is None or self._clip[0] != clip_id:
            try:
                self._clip = (clip_id, MotionInterpolator(self.raw.egomotion(clip_id, chunk)))
            except (MissingClipData, KeyError, ValueError) as err:
                self._clip = (clip_id, f"its clip's egomotion cannot be read ({err})")
        motion = self._clip[1]
        if isinstance(motion, str):
            raise ValueError(motion)
        prompt = self.prompt
        return ego_history(motion, last_frame_us, prompt.ego_history_seconds, prompt.history_hz)

    def add(self, table: pa.Table) -> tuple[pa.Table, dict[str, str]]:
        """The table with its history columns, less the segments that have none (id -> why)."""
        kept, speed, curvature, dropped = [], [], [], {}
        columns = ("clip_id", "chunk", "segment_index", "frame_timestamps_us")
        for number, (clip, chunk, index, stamps) in enumerate(
            zip(*(table[c].to_pylist() for c in columns), strict=True)
        ):
            try:
                pairs = self.history(clip, chunk, stamps[-1])
            except ValueError as err:
                dropped[record.segment_id(clip, index)] = str(err)
                continue
            kept.append(number)
            speed.append(pairs[:, 0].tolist())
            curvature.append(pairs[:, 1].tolist())
        table = table.take(pa.array(kept, pa.int64()))
        return _with_history(table, speed, curvature), dropped


def _with_history(table: pa.Table, speed: list | None = None, curvature: list | None = None):
    """The table with its history columns: the lists given, or empty ones (no history)."""
    speed = speed if speed is not None else [[]] * table.num_rows
    curvature = curvature if curvature is not None else [[]] * table.num_rows
    kind = pa.list_(pa.float64())
    table = table.append_column("history_speed", pa.array(speed, kind))
    return table.append_column("history_curvature", pa.array(curvature, kind))


def _shown_views(table: pa.Table, cameras: tuple[str, ...], root: str) -> pa.Table:
    """The table with the further views the prompt shows (`cameras`, none for one camera), in
    its order, their paths absolute under `root`. Row by row: only where views are shown."""
    if not cameras:
        empty = record.with_views(table.drop_columns([f.name for f in record.VIEWS]))
        return empty.select(table.column_names).cast(table.schema)
    names = [f.name for f in record.VIEWS]
    rows = zip(*(table[name].to_pylist() for name in names), strict=True)
    kept: dict[str, list] = {name: [] for name in names}
    for own_and_extra, *extras in rows:
        own, others = own_and_extra[:1], own_and_extra[1:]
        order = [others.index(c) for c in cameras[1:] if c in others]
        kept["cameras"].append(own + [others[i] for i in order])
        kept["extra_videos"].append([f"{root}/{extras[0][i]}" for i in order])
        for name, values in zip(names[2:], extras[1:], strict=True):
            kept[name].append([values[i] for i in order])
    for name in names:
        index = table.column_names.index(name)
        table = table.set_column(index, name, pa.array(kept[name], table.schema.field(name).type))
    return table


def build_dataset(
    manifest: Path,
    segments_dir: Path,
    assignment: dict[str, str],
    prompt: PromptSettings,
    answer_format: AnswerFormat,
    output_dir: Path,
    progress: Callable[[int], None] = lambda rows: None,
    batch_size: int = 4096,
    raw: RawDataset | None = None,
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Write the DatasetDict (train / validation / test by `assignment`, clip_id -> split) to
    `output_dir`; video paths are absolute so it can be read from anywhere. With an ego history
    in the prompt, each segment's comes from `raw`, its clip's egomotion. Returns, per split,
    (clips, segments), and the segments dropped for want of history (id -> why)."""
    root = str(segments_dir.resolve())
    writers = {}
    for name in SPLITS:
        (output_dir / name).mkdir(parents=True)
        writers[name] = ArrowWriter(features=FEATURES, path=str(output_dir / name / SHARD))
    clips: dict[str, set] = {name: set() for name in SPLITS}
    missing, listings, dropped = 0, {}, {}
    reader = HistoryReader(raw, prompt) if prompt.history_pairs else None
    extra = ["chunk", "frame_timestamps_us"] if reader else []
    wanted = pa.schema(
        [*record.arrow_fields(record.SEGMENT), ("video", pa.string())]
        + [(name, pa.int64() if name == "chunk" else pa.list_(pa.int64())) for name in extra]
    )
    present = set(pq.ParquetFile(manifest).schema_arrow.names)
    columns = [name for name in wanted.names if name in present]  # a manifest before views
    for batch in pq.ParquetFile(manifest).iter_batches(batch_size=batch_size, columns=columns):
        # As the record declares them (pandas writes strings as large_string, say).
        table = record.with_views(pa.Table.from_batches([batch]))
        table = table.select(wanted.names).cast(wanted)
        table = _shown_views(table, prompt.cameras, root)
        if reader is None:
            table = _with_history(table)
        else:
            table, lost = reader.add(table)
            dropped.update(lost)
        split_of = np.array([assignment[clip] for clip in table["clip_id"].to_pylist()])
        for name in SPLITS:
            part = table.filter(pa.array(split_of == name, pa.bool_()))
            if not part.num_rows:
                continue
            videos = pc.binary_join_element_wise(root, part["video"], "/")
            paths = videos.to_pylist() + pc.list_flatten(part["extra_videos"]).to_pylist()
            missing += int(missing_files(paths, listings).sum())
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
    return {name: (len(clips[name]), counts[name]) for name in SPLITS}, dropped
