"""One segment's record, declared once: the fields a segment carries from the manifest through
the dataset rows and the training samples to evaluation (who it is, how its video plays, and its
labels). Every stage copies them with `carried`, never field by field.

To add a field: declare it here, write it where segments are made (prepare/writer.py), and it
reaches every later stage by itself. The ego history is the exception: the dataset step adds it
(prepare/hf_dataset.py), since how much of it there is, is that step's choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Field:
    name: str
    kind: type | str  # str, int, float, list (of floats), "strings" or "ints" (lists of those)
    meaning: str


IDENTITY = (
    Field("clip_id", str, "the source clip of the dataset"),
    Field("segment_index", int, "segment s of its clip: the 30 frames from the one nearest s s"),
)
VIDEO = (
    Field("fps", float, "the segment mp4's nominal frame rate, the one the processor gets"),
    Field("frames", int, "frames the mp4 holds (30): with width and height, its token count"),
    Field("width", int, "frame width of the mp4 in pixels"),
    Field("height", int, "frame height of the mp4 in pixels"),
)
# A segment's further views: the frames other cameras took in its window (segmenting with
# --cameras). Records written before views existed lack these fields: they read as none.
VIEWS = (
    Field("cameras", "strings", "cameras of the segment's views, its own camera first"),
    Field("extra_videos", "strings", "mp4 of each further view, in the order of cameras"),
    Field("extra_fps", list, "nominal frame rate of each further view's mp4"),
    Field("extra_frames", "ints", "frames each further view's mp4 holds"),
    Field("extra_widths", "ints", "frame width of each further view's mp4"),
    Field("extra_heights", "ints", "frame height of each further view's mp4"),
)
LABELS = (
    Field("future_speed", list, "forward speed (m/s) at the 30 frames after the segment: label"),
    Field("future_curvature", list, "curvature (1/m, + = left) at those 30 frames: label"),
    Field("observed_speed", list, "forward speed (m/s) at the segment's own 30 frames"),
    Field("observed_curvature", list, "curvature (1/m, + = left) at the segment's own frames"),
)
HISTORY = (
    Field("history_speed", list, "ego history: forward speed (m/s), oldest first (or none)"),
    Field("history_curvature", list, "ego history: curvature (1/m), oldest first (or none)"),
)
SEGMENT = IDENTITY + VIDEO + VIEWS + LABELS  # what segmenting writes to the manifest
FIELDS = SEGMENT + HISTORY  # what the dataset rows and training samples carry


_ARROW_TYPES = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    list: pa.list_(pa.float64()),
    "strings": pa.list_(pa.string()),
    "ints": pa.list_(pa.int64()),
}
_PLAIN = {list: float, "strings": str, "ints": int}


def arrow_fields(fields: tuple[Field, ...]) -> list[tuple[str, pa.DataType]]:
    """The fields as Arrow columns, for the files that store records in columns."""
    return [(f.name, _ARROW_TYPES[f.kind]) for f in fields]


def segment_id(clip_id: str, index: int) -> str:
    """The id of one segment, as in the dataset's and the training JSON's `id`."""
    return f"{clip_id}_seg{index:02d}"


def _plain(value, kind):
    if kind in _PLAIN:
        return [_PLAIN[kind](v) for v in value]
    return kind(value)


def carried(row: Mapping, fields: tuple[Field, ...] = FIELDS) -> dict:
    """The record's `fields` of a manifest row, dataset row or training sample, as plain
    Python values (parquet gives numpy arrays, JSON gives lists: both come out as lists); the
    views of a record written before them are none."""
    return {
        f.name: _plain(row[f.name] if f.name in row or f not in VIEWS else (), f.kind)
        for f in fields
    }


def with_views(table: pa.Table) -> pa.Table:
    """An Arrow table of records with the view columns, empty where it was written before views
    existed (an older manifest or dataset)."""
    for field in VIEWS:
        if field.name not in table.column_names:
            table = table.append_column(
                field.name, pa.array([[]] * table.num_rows, _ARROW_TYPES[field.kind])
            )
    return table


def view_count(row: Mapping) -> int:
    """The segment's views: its own camera's and every further one."""
    return 1 + len(row.get("extra_videos") or ())


def pairs(row: Mapping, when: str) -> np.ndarray:
    """(30, 2) (speed, curvature) of a record: `when` is "future" (the labels) or "observed"."""
    return np.stack([row[f"{when}_speed"], row[f"{when}_curvature"]], axis=-1).astype(np.float64)
