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
    kind: type  # str, int, float, or list (of floats)
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
SEGMENT = IDENTITY + VIDEO + LABELS  # what segmenting writes to the manifest
FIELDS = SEGMENT + HISTORY  # what the dataset rows and training samples carry


_ARROW_TYPES = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    list: pa.list_(pa.float64()),
}


def arrow_fields(fields: tuple[Field, ...]) -> list[tuple[str, pa.DataType]]:
    """The fields as Arrow columns, for the files that store records in columns."""
    return [(f.name, _ARROW_TYPES[f.kind]) for f in fields]


def segment_id(clip_id: str, index: int) -> str:
    """The id of one segment, as in the dataset's and the training JSON's `id`."""
    return f"{clip_id}_seg{index:02d}"


def _plain(value, kind: type):
    if kind is list:
        return [float(v) for v in value]
    return kind(value)


def carried(row: Mapping, fields: tuple[Field, ...] = FIELDS) -> dict:
    """The record's `fields` of a manifest row, dataset row or training sample, as plain
    Python values (parquet gives numpy arrays, JSON gives lists: both come out as lists)."""
    return {f.name: _plain(row[f.name], f.kind) for f in fields}


def pairs(row: Mapping, when: str) -> np.ndarray:
    """(30, 2) (speed, curvature) of a record: `when` is "future" (the labels) or "observed"."""
    return np.stack([row[f"{when}_speed"], row[f"{when}_curvature"]], axis=-1).astype(np.float64)
