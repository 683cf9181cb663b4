"""Clips decoded for answering, exactly as training decodes them (qwenvl.video): a training
sample's segment, or any mp4 made one second of 30 frames. Every backend gets these frames."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qwenvl.task import CLIP_FRAMES
from qwenvl.video import VideoSettings, decode_video


class ClipUnreadable(ValueError):
    """A clip that cannot be answered: str() says why (not found, does not decode, ...)."""


def decode_problem(err: Exception) -> str:
    """The cause of a failed decode in a few words: PyAV's message repeats the path, its
    strerror is the cause alone."""
    return getattr(err, "strerror", None) or str(err).splitlines()[0] or type(err).__name__


def _decoded(video, settings: VideoSettings) -> tuple[np.ndarray, float]:
    if not isinstance(video, str) or not Path(video).is_file():
        raise ClipUnreadable("video not found")
    try:
        return decode_video(video, settings)
    except Exception as err:  # PyAV raises many kinds (InvalidDataError, EOFError, ...)
        raise ClipUnreadable(f"cannot decode ({decode_problem(err)})") from None


def clip_of(sample: Mapping, settings: VideoSettings) -> tuple[np.ndarray, float]:
    """(frames, fps) of a training-format sample, decoded at the model's frame size (its
    recorded fps, the segment's nominal rate, wins over the container's); ClipUnreadable when
    its video is missing, does not decode, or holds fewer frames than it claims."""
    frames, fps = _decoded(sample.get("video"), settings)
    claimed = sample.get("frames")
    if claimed and len(frames) < claimed:
        raise ClipUnreadable(f"decodes {len(frames)} of the {claimed} frames it claims")
    return frames, float(sample.get("fps") or fps)


def views_of(sample: Mapping, settings: VideoSettings) -> tuple[tuple[np.ndarray, float], ...]:
    """Every view of a training-format sample (its own camera's clip, then the others'), each
    decoded at its own settings; ClipUnreadable as clip_of says."""
    views = [clip_of(sample, settings)]
    extra = zip(sample.get("extra_videos") or (), sample.get("extra_frames") or (),
                sample.get("extra_fps") or (), strict=True)  # fmt: skip
    for view, (video, frames, fps) in enumerate(extra, start=1):
        views.append(
            clip_of({"video": video, "frames": frames, "fps": fps}, settings.for_view(view))
        )
    return tuple(views)


def to_one_second(frames: np.ndarray, fps: float, count: int = CLIP_FRAMES):
    """The last second of a clip as exactly `count` frames, and the fps that makes them 1 s."""
    if len(frames) == count and abs(fps - count) < 0.5:
        return frames, fps
    last_second = frames[-max(1, int(round(fps))) :]
    indices = np.linspace(0, len(last_second) - 1, count).round().astype(int)
    return last_second[indices], float(count)


def any_clip(video: str, settings: VideoSettings) -> tuple[np.ndarray, float]:
    """Any mp4 as one second of 30 frames (its last second, resampled); ClipUnreadable when it
    is missing or does not decode."""
    return to_one_second(*_decoded(video, settings))


def any_view(video: str, settings: VideoSettings) -> tuple[np.ndarray, float]:
    """Another camera's clip of the moment, as its segments hold it in training: its last
    second at its own rate (not resampled: the view's own budget samples it); ClipUnreadable
    when it is missing or does not decode."""
    frames, fps = _decoded(video, settings)
    return frames[-max(1, int(round(fps))) :], fps
