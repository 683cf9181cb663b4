"""tokens: what each camera set costs in visual tokens per sample at the video settings (the
VIDEO_* variables, else the defaults), for segments cut from 1080p sources at the segmenting
widths. From the geometry alone: no model, no video."""

from __future__ import annotations

from qwenvl.prepare.rawdata import DEFAULT_CAMERA
from qwenvl.prepare.writer import Cut, output_size
from qwenvl.task import CLIP_FRAMES
from qwenvl.video import TEMPORAL_PATCH, VideoSettings, sample_indices, visual_token_count

TELE = "camera_front_tele_30fov"
CROSS = ("camera_cross_left_120fov", "camera_cross_right_120fov")
REAR = ("camera_rear_left_70fov", "camera_rear_right_70fov", "camera_rear_tele_30fov")
CAMERA_SETS = {
    "front": (DEFAULT_CAMERA,),
    "front + 2 cross": (DEFAULT_CAMERA, *CROSS),
    "front + tele + 2 cross": (DEFAULT_CAMERA, TELE, *CROSS),
    "all 7": (DEFAULT_CAMERA, TELE, *CROSS, *REAR),
}
SOURCE = (1920, 1080)  # every camera of the dataset records 1080p


def _view(settings: VideoSettings, max_width: int) -> dict:
    width, height = output_size(*SOURCE, max_width)
    frames = len(sample_indices(CLIP_FRAMES, settings.fps, settings))
    return {
        "segment_size": f"{width}x{height}",
        "frames_seen": frames,
        "groups": -(-frames // TEMPORAL_PATCH),
        "visual_tokens": visual_token_count(CLIP_FRAMES, height, width, settings),
    }


def bench_tokens(cut: Cut | None = None) -> dict:
    """Per camera set, the visual tokens of a sample: its first camera's at the segments'
    settings, each other's at the other cameras' budget (VIDEO_SIDE_*). Each group of two
    frames also costs its "<t seconds>" stamp and two markers, about 8 tokens."""
    cut = cut or Cut()
    settings = VideoSettings.from_env()
    front = _view(settings, cut.max_width)
    side = _view(settings.for_view(1), cut.side_max_width)
    sets = {
        name: {
            "cameras": list(cameras),
            "visual_tokens": front["visual_tokens"] + side["visual_tokens"] * (len(cameras) - 1),
            "groups": front["groups"] + side["groups"] * (len(cameras) - 1),
        }
        for name, cameras in CAMERA_SETS.items()
    }
    return {"settings": settings.__dict__, "front_view": front, "other_view": side, "sets": sets}
