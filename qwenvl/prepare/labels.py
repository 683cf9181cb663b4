"""How segments and their labels are made: cut a clip into 1-second segments at its camera
timestamps, and label each with the (forward speed, curvature) of the next second, interpolated
from the egomotion at those frames' timestamps (with the egomotion maths that takes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qwenvl.task import CLIP_FRAMES, HORIZON_PAIRS

SEGMENT_FRAMES = CLIP_FRAMES  # a segment's own frames: 1 s at 30 FPS
MIN_CLIP_SECONDS = 2.0
US_PER_SECOND = 1_000_000


def quaternion_from_yaw(yaw: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (qx, qy, qz, qw) of a rotation by `yaw` radians about +z."""
    yaw = np.asarray(yaw, dtype=np.float64)
    zeros = np.zeros_like(yaw)
    return np.stack([zeros, zeros, np.sin(yaw / 2), np.cos(yaw / 2)], axis=-1)


def yaw_from_quaternion(q: np.ndarray) -> np.ndarray:
    """Heading (rad, counter-clockwise from +x) of (N, 4) quaternions (qx, qy, qz, qw)."""
    qx, qy, qz, qw = np.moveaxis(np.asarray(q, dtype=np.float64), -1, 0)
    return np.arctan2(2.0 * (qw * qz + qx * qy), 1.0 - 2.0 * (qy * qy + qz * qz))


def rotate_into_body(q: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Express anchor-frame vectors (N, 3) in the body frame given by quaternions q (N, 4)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    # Rotating by the conjugate quaternion maps anchor-frame vectors into the body frame.
    u = -q[..., :3]
    w = q[..., 3:4]
    v = np.asarray(vectors, dtype=np.float64)
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def forward_speed(egomotion: pd.DataFrame) -> np.ndarray:
    """Signed forward speed (m/s) per egomotion row: velocity in the body frame, x component.

    Negative when the vehicle reverses.
    """
    q = egomotion[["qx", "qy", "qz", "qw"]].to_numpy()
    velocity = egomotion[["vx", "vy", "vz"]].to_numpy()
    return rotate_into_body(q, velocity)[:, 0]


class MotionInterpolator:
    """(forward speed m/s, curvature 1/m) at any time inside a clip's egomotion.

    Interpolation is NVIDIA's devkit's (`physical_ai_av.egomotion.EgomotionState`): rotation
    by slerp, velocity and curvature linearly, no extrapolation. Forward speed is the
    interpolated anchor-frame velocity expressed in the interpolated body frame (its x), so
    negative when reversing; curvature keeps its sign (positive = left turn).
    """

    def __init__(self, egomotion: pd.DataFrame) -> None:
        from physical_ai_av.egomotion import EgomotionState

        self.timestamps = egomotion["timestamp"].to_numpy(dtype=np.int64, copy=True)
        state = EgomotionState.from_egomotion_df(egomotion)
        self._interpolate = state.create_interpolator(self.timestamps)

    def __call__(self, timestamps_us: np.ndarray) -> np.ndarray:
        """(N, 2) at `timestamps_us`; ValueError when one lies outside the egomotion's range."""
        t = np.asarray(timestamps_us, dtype=np.int64)
        first, last = self.timestamps[0], self.timestamps[-1]
        if len(t) and (t.min() < first or t.max() > last):
            raise ValueError(
                f"frame timestamps [{t.min()}, {t.max()}] us fall outside the egomotion range "
                f"[{first}, {last}] us"
            )
        state = self._interpolate(t)
        body_velocity = state.pose.rotation.inv().apply(state.velocity)
        return np.stack([body_velocity[:, 0], state.curvature[:, 0]], axis=-1)


def history_times(last_frame_us: int, seconds: float, hz: float) -> np.ndarray:
    """The times of an ego history: round(seconds * hz) of them, 1/hz apart, oldest first, the
    last at the segment's last frame (1 s at 10 Hz: t - 0.9 s, ..., t - 0.1 s, t)."""
    count = round(seconds * hz)
    steps = np.arange(count - 1, -1, -1)
    return last_frame_us - np.round(steps * 1e6 / hz).astype(np.int64)


def ego_history(
    motion: MotionInterpolator, last_frame_us: int, seconds: float, hz: float
) -> np.ndarray:
    """(N, 2) (forward speed, curvature) of the ego history ending at the last observed frame,
    from egomotion at or before it only: a history time past the last egomotion row at or
    before that frame takes that row's values, and interpolation at a row uses that row alone,
    so no egomotion after the frame enters a prompt. ValueError when the egomotion does not
    reach back far enough."""
    times = history_times(last_frame_us, seconds, hz)
    rows = motion.timestamps[motion.timestamps <= last_frame_us]
    if not len(rows) or times[0] < rows[0]:
        start = f"{rows[0] / 1e6:.2f} s" if len(rows) else "after it"
        raise ValueError(
            f"no {seconds:g} s of egomotion before the segment's last frame (it starts at "
            f"{start}, the history at {times[0] / 1e6:.2f} s)"
        )
    return motion(np.minimum(times, rows[-1]))


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

    def labels(self) -> dict[str, list[float]]:
        """The record's label fields (qwenvl.record.LABELS) of this segment."""
        return {
            "future_speed": self.future[:, 0].tolist(),
            "future_curvature": self.future[:, 1].tolist(),
            "observed_speed": self.observed[:, 0].tolist(),
            "observed_curvature": self.observed[:, 1].tolist(),
        }


def check_timestamps(timestamps_us: np.ndarray) -> np.ndarray:
    """The camera timestamps as int64, or ClipError for NaN, disorder or a clip under 2 s."""
    t = np.asarray(timestamps_us, dtype=np.float64)
    if len(t) == 0 or not np.isfinite(t).all():
        raise ClipError("camera timestamps contain NaN or are empty")
    if np.any(np.diff(t) <= 0):
        raise ClipError("camera timestamps are not strictly increasing")
    if (
        len(t) < SEGMENT_FRAMES + HORIZON_PAIRS
        or t[-1] - t[0] < (MIN_CLIP_SECONDS - 0.1) * US_PER_SECOND
    ):
        raise ClipError(f"clip shorter than {MIN_CLIP_SECONDS:g} s ({len(t)} frames)")
    return t.astype(np.int64)


def segment_starts(timestamps_us: np.ndarray) -> list[int]:
    """Start frame of each segment s: the frame whose timestamp is nearest to s seconds.

    Only segments whose 30 input and 30 label frames all exist are kept.
    """
    starts = []
    for second in range(int(timestamps_us[-1] // US_PER_SECOND) + 1):
        start = int(np.argmin(np.abs(timestamps_us - second * US_PER_SECOND)))
        if start + SEGMENT_FRAMES + HORIZON_PAIRS > len(timestamps_us):
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
            future = motion(t[start + SEGMENT_FRAMES + np.arange(HORIZON_PAIRS)])
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


@dataclass(frozen=True)
class SideFrames:
    """The frames another camera took in each segment's window (cameras are not frame-locked:
    each has its own timestamps, possibly its own rate), and the segments it has too few for."""

    frames: dict[int, np.ndarray]  # segment index -> the camera's frame indices in its window
    fps: float  # the camera's nominal rate: what its segment mp4s play at
    short: dict[int, str]  # segment index -> why the camera cannot join it


MIN_VIEW_FRAMES = 2  # the vision encoder takes frames in pairs


def side_frames(timestamps_us: np.ndarray, segments: list[Segment], camera: str) -> SideFrames:
    """For each segment, the indices of `camera`'s frames whose own timestamps lie within the
    segment's window, from its first frame to its last: nothing after the segment's last frame
    enters a view (the label's second starts after it). A camera whose frames do not span the
    window (it starts late or stops early, more than a frame and a half from either end) cannot
    join that segment. ClipError for timestamps that are NaN or out of order."""
    t = np.asarray(timestamps_us, dtype=np.float64)
    if len(t) < MIN_VIEW_FRAMES or not np.isfinite(t).all() or np.any(np.diff(t) <= 0):
        raise ClipError(f"{camera} timestamps contain NaN, are too few or not increasing")
    t = t.astype(np.int64)
    fps = float(round(US_PER_SECOND / np.median(np.diff(t))))
    slack = 1.5 * US_PER_SECOND / fps
    frames, short = {}, {}
    for seg in segments:
        first, last = seg.frame_timestamps_us[0], seg.frame_timestamps_us[-1]
        inside = np.flatnonzero((t >= first) & (t <= last))
        spans = len(inside) >= MIN_VIEW_FRAMES and (
            t[inside[0]] - first <= slack and last - t[inside[-1]] <= slack
        )
        if spans:
            frames[seg.index] = inside
        elif len(inside):
            short[seg.index] = (
                f"{camera} covers {t[inside[0]] / 1e6:.2f}-{t[inside[-1]] / 1e6:.2f} s of this "
                f"segment's {first / 1e6:.2f}-{last / 1e6:.2f} s only"
            )
        else:
            short[seg.index] = f"{camera} has no frame in this segment's window"
    return SideFrames(frames, fps, short)
