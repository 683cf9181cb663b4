"""Video settings shared by training, evaluation and prediction, and clip decoding for the model.

PyAV, torch and transformers are imported where clips are decoded, not at the top: the
launchers read the settings' defaults and checks from here before any of them is needed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from qwenvl.files import StoredSettings
from qwenvl.task import CLIP_FPS, CLIP_FRAMES

if TYPE_CHECKING:
    import torch
    from transformers.video_utils import VideoMetadata

# Qwen3-VL: 16-pixel patches merged 2x2, so one visual token per 32x32 pixels per 2 frames.
PIXEL_FACTOR = 32
TEMPORAL_PATCH = 2


@dataclass(frozen=True)
class VideoSettings(StoredSettings):
    """How a clip is sampled and sized before the Qwen3-VL processor sees it. Stored as
    video_settings.json in every checkpoint; evaluation and prediction read it from there."""

    FILE: ClassVar[str] = "video_settings.json"
    fps: float = float(CLIP_FPS)
    """Frames per second sampled from the clip (the clip's own rate keeps every frame)."""
    min_frames: int = 16
    """Fewest frames sampled per clip."""
    max_frames: int = 32
    """Most frames sampled per clip."""
    min_pixels: int = 128 * 32 * 32
    """Lower bound on pixels per frame after resizing."""
    max_pixels: int = 256 * 32 * 32
    """Upper bound on pixels per frame after resizing."""
    side_min_frames: int = 4
    """Fewest frames sampled per clip of a camera other than the segments' own."""
    side_max_frames: int = 8
    """Most frames sampled per clip of another camera: the front camera is the one that sees
    where the car goes; the others see what is beside it, at a fraction of its tokens."""
    side_min_pixels: int = 32 * 32
    """Lower bound on pixels per frame of another camera's clip."""
    side_max_pixels: int = 64 * 32 * 32
    """Upper bound on pixels per frame of another camera's clip."""

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"VIDEO_FPS must be positive, got {self.fps}")
        for prefix, floor in (("min_frames", 1), ("min_pixels", PIXEL_FACTOR**2)):
            for side in ("", "side_"):
                low_name, high_name = f"{side}{prefix}", f"{side}{prefix.replace('min', 'max')}"
                low, high = getattr(self, low_name), getattr(self, high_name)
                if not floor <= low <= high:
                    raise ValueError(
                        f"need {floor} <= VIDEO_{low_name.upper()} <= VIDEO_{high_name.upper()}, "
                        f"got {low}, {high}"
                    )

    def for_view(self, index: int) -> VideoSettings:
        """The settings a segment's view is sampled and sized with: its own camera's (view 0),
        else the budget of the other cameras."""
        if index == 0:
            return self
        side = (self.side_min_frames, self.side_max_frames, self.side_min_pixels,
                self.side_max_pixels)  # fmt: skip
        return VideoSettings(self.fps, *side, *side)

    @classmethod
    def from_env(cls) -> VideoSettings:
        """Read VIDEO_FPS, VIDEO_MIN_FRAMES, ... from the environment, defaults elsewhere."""
        values = {}
        for field in fields(cls):
            raw = os.environ.get(f"VIDEO_{field.name.upper()}")
            if raw:
                values[field.name] = float(raw) if field.name == "fps" else int(raw)
        return cls(**values)


def sample_indices(num_frames: int, clip_fps: float, settings: VideoSettings) -> np.ndarray:
    """Indices of the frames the model sees: settings.fps over the clip, clamped to the bounds."""
    wanted = int(num_frames / clip_fps * settings.fps)
    count = min(max(wanted, settings.min_frames), settings.max_frames, num_frames)
    return np.linspace(0, num_frames - 1, count).round().astype(np.int64)


def frame_size(height: int, width: int, settings: VideoSettings) -> tuple[int, int]:
    """(height, width), multiples of 32, aspect kept, pixels within [min_pixels, max_pixels]."""
    f = PIXEL_FACTOR
    h = max(f, round(height / f) * f)
    w = max(f, round(width / f) * f)
    if h * w > settings.max_pixels:
        beta = math.sqrt(height * width / settings.max_pixels)
        h = max(f, math.floor(height / beta / f) * f)
        w = max(f, math.floor(width / beta / f) * f)
    elif h * w < settings.min_pixels:
        beta = math.sqrt(settings.min_pixels / (height * width))
        h = math.ceil(height * beta / f) * f
        w = math.ceil(width * beta / f) * f
    return h, w


def visual_token_count(num_frames: int, height: int, width: int, settings: VideoSettings) -> int:
    """Visual tokens Qwen3-VL spends on a clip of num_frames frames of height x width."""
    sampled = len(sample_indices(num_frames, settings.fps, settings))
    h, w = frame_size(height, width, settings)
    return math.ceil(sampled / TEMPORAL_PATCH) * (h // PIXEL_FACTOR) * (w // PIXEL_FACTOR)


def decode_video(
    path: str | Path, settings: VideoSettings | None = None
) -> tuple[np.ndarray, float]:
    """All frames of a video as (T, H, W, 3) uint8 RGB, and its average frame rate.

    With `settings`, frames come out already at frame_size(): libswscale resizes them while
    converting to RGB (area filter), far cheaper than resizing float tensors afterwards. Train,
    evaluation and prediction all decode this way, so they see identical pixels.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        height, width = stream.codec_context.height, stream.codec_context.width
        if settings is not None:
            height, width = frame_size(height, width, settings)
        frames = [
            frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
            for frame in container.decode(stream)
        ]
        rate = stream.average_rate or stream.guessed_rate
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames), float(rate) if rate else float(CLIP_FPS)


def prepare_clip(
    frames: np.ndarray, clip_fps: float, settings: VideoSettings
) -> tuple[torch.Tensor, VideoMetadata]:
    """Sample and resize a clip; the metadata carries its real fps so timestamps are right."""
    import torch
    import torch.nn.functional as F
    from transformers.video_utils import VideoMetadata

    indices = sample_indices(len(frames), clip_fps, settings)
    video = torch.from_numpy(frames[indices]).permute(0, 3, 1, 2)
    h, w = frame_size(video.shape[2], video.shape[3], settings)
    if (h, w) != tuple(video.shape[2:]):
        video = F.interpolate(video.float(), size=(h, w), mode="bilinear", antialias=True)
        video = video.round().clamp(0, 255).to(torch.uint8)
    metadata = VideoMetadata(
        total_num_frames=len(frames),
        fps=clip_fps,
        width=frames.shape[2],
        height=frames.shape[1],
        duration=len(frames) / clip_fps,
        frames_indices=indices.tolist(),
    )
    return video, metadata


# Frames arrive sampled and sized by prepare_clip, so the processor must not redo either.
PROCESSOR_VIDEO_KWARGS = {
    "do_sample_frames": False,
    "do_resize": False,
    "cap_pixels_per_frame": False,
}


def describe_training_video(processor, settings: VideoSettings) -> None:
    """Write the training video settings into the processor's video config, so that a model
    saved with it, loaded with plain transformers (or vLLM), samples and sizes 1-second clips
    as training did instead of at Qwen's default 2 fps.

    Qwen3-VL's video processor bounds the pixels of the whole clip (frames x height x width),
    ours bound each frame; for the 1-second, 30 FPS segments both give the same size.
    """
    frames = len(sample_indices(CLIP_FRAMES, CLIP_FPS, settings))
    video_processor = processor.video_processor
    video_processor.fps = settings.fps
    video_processor.min_frames = settings.min_frames
    video_processor.max_frames = settings.max_frames
    video_processor.size = {
        "shortest_edge": settings.min_pixels * frames,
        "longest_edge": settings.max_pixels * frames,
    }
    video_processor.do_sample_frames = True
    video_processor.do_resize = True
    video_processor.cap_pixels_per_frame = False
