"""Cut clips into 1-second segments and label each with the next second's ego motion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qwenvl.answer import NUM_PAIRS
from qwenvl.egomotion import MotionInterpolator

SEGMENT_FRAMES = NUM_PAIRS  # 30 frames: 1 s at 30 FPS
MIN_CLIP_SECONDS = 2.0
US_PER_SECOND = 1_000_000


class ClipError(ValueError):
    """A clip that cannot be segmented; str() is the cause."""


@dataclass(frozen=True)
class Segment:
    """Frame indices and labels of one 1-second segment."""

    index: int
    frames: np.ndarray  # the 30 input frame indices
    frame_timestamps_us: np.ndarray
    observed: np.ndarray  # (30, 2) forward speed m/s, curvature 1/m at the input frames
    future: np.ndarray  # (30, 2) at the 30 frames after them: the labels


def check_timestamps(timestamps_us: np.ndarray) -> np.ndarray:
    """The camera timestamps as int64, or ClipError for NaN, disorder or a clip under 2 s."""
    t = np.asarray(timestamps_us, dtype=np.float64)
    if len(t) == 0 or not np.isfinite(t).all():
        raise ClipError("camera timestamps contain NaN or are empty")
    if np.any(np.diff(t) <= 0):
        raise ClipError("camera timestamps are not strictly increasing")
    if len(t) < 2 * SEGMENT_FRAMES or t[-1] - t[0] < (MIN_CLIP_SECONDS - 0.1) * US_PER_SECOND:
        raise ClipError(f"clip shorter than {MIN_CLIP_SECONDS:g} s ({len(t)} frames)")
    return t.astype(np.int64)


def segment_starts(timestamps_us: np.ndarray) -> list[int]:
    """Start frame of each segment s: the frame whose timestamp is nearest to s seconds.

    Only segments whose 30 input and 30 label frames all exist are kept.
    """
    starts = []
    for second in range(int(timestamps_us[-1] // US_PER_SECOND) + 1):
        start = int(np.argmin(np.abs(timestamps_us - second * US_PER_SECOND)))
        if start + 2 * SEGMENT_FRAMES > len(timestamps_us):
            break
        starts.append(start)
    return starts


@dataclass(frozen=True)
class ClipSegments:
    """The labelled segments of a clip, and the segments left out with the reason for each."""

    segments: list[Segment]
    dropped: dict[int, str]  # segment index -> why (e.g. its next second has no egomotion)


def make_segments(timestamps_us: np.ndarray, egomotion: pd.DataFrame) -> ClipSegments:
    """All segments of a clip with observed and next-second (speed, curvature) labels.

    A segment whose frames fall outside the egomotion's time range, or meet NaN in it, is
    dropped with its reason; the clip fails (ClipError) only when no segment is left.
    """
    t = check_timestamps(timestamps_us)
    if egomotion.empty:
        raise ClipError("egomotion is empty")
    ego_t = egomotion["timestamp"].to_numpy(dtype=np.float64)
    if not np.isfinite(ego_t).all() or np.any(np.diff(ego_t) <= 0):
        raise ClipError("egomotion timestamps are NaN or not strictly increasing")
    try:
        motion = MotionInterpolator(egomotion)
    except (KeyError, ValueError) as err:
        raise ClipError(f"egomotion cannot be read ({err})") from None
    segments, dropped = [], {}
    for index, start in enumerate(segment_starts(t)):
        frames = np.arange(start, start + SEGMENT_FRAMES)
        try:
            observed = motion(t[frames])
            future = motion(t[frames + SEGMENT_FRAMES])
        except ValueError as err:
            dropped[index] = str(err)
            continue
        if not (np.isfinite(observed).all() and np.isfinite(future).all()):
            dropped[index] = "egomotion has NaN values in this segment"
            continue
        segments.append(Segment(index, frames, t[frames], observed, future))
    if not segments:
        first = next(iter(dropped.values()), "the clip holds no 2 s of frames")
        raise ClipError(f"no complete segment ({first})")
    return ClipSegments(segments, dropped)
