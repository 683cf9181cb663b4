"""The predicted and true paths drawn where the driver sees them: on the segment's last frame,
through the clip's camera calibration.

A path is its 30 (speed, curvature) pairs integrated with the unicycle model on the ground plane,
from the rear axle (the rig's origin) at the last observed frame. The calibration is read
through NVIDIA's devkit: `CameraIntrinsics.from_intrinsics_df` builds the camera model (f-theta
for the wide cameras) and `SensorExtrinsics.from_extrinsics_df` the camera's pose. That pose is
taken as the camera's in the rig frame (rear axle on the ground, x forward, y left, z up), the
camera frame being the devkit camera models' (z out of the lens, x right, y down): that reading
comes from public readers of the dataset, not from the devkit itself, so every calibration is
checked against it (the optical axis must point forward and a little down) and one that fails
gets no overlay, never a path drawn in the sky.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qwenvl.layout import CALIBRATION
from qwenvl.trajectory import integrate_unicycle

TRUE_COLOUR = (40, 220, 80)
PREDICTED_COLOUR = (250, 60, 200)
# A point of the path is drawn from this depth in front of the lens: nearer ones lie at the
# fisheye's rim or behind the camera (the first metre or two of the path is under the car).
NEAR_M = 1.0
DOT_EVERY = 3  # path points between dots: 0.1 s at 30 FPS


class NoOverlay(ValueError):
    """Why a clip gets no overlay (no calibration, or one that fails the check)."""


class Calibrations:
    """Clips' calibrations (JSON, see prepare/rawdata.py), read from the calibration.parquet of
    the segments folder a segment's video lies in (videos/<clip>/<segment>.mp4), once per
    folder."""

    def __init__(self) -> None:
        self._tables: dict[Path, dict[str, str] | None] = {}

    def of(self, video: str, clip_id: str) -> str:
        """The clip's calibration; NoOverlay where its segments folder has none for it."""
        root = Path(video).resolve().parents[2]
        if root not in self._tables:
            path = root / CALIBRATION
            table = pd.read_parquet(path) if path.is_file() else None
            self._tables[root] = (
                None
                if table is None
                else dict(zip(table["clip_id"], table["calibration"], strict=True))
            )
        table = self._tables[root]
        if table is None:
            raise NoOverlay(f"no {CALIBRATION} beside its segments ({root})")
        return table.get(clip_id, "")


@dataclass
class CameraView:
    """A clip's camera as the overlay projects through it: the devkit's camera model of its
    intrinsics, the camera's pose on the rig, and the scale from the calibration's image size to
    the frame drawn on (segments are written smaller than the source)."""

    model: object  # physical_ai_av.utils.camera_models.CameraModel
    pose: object  # scipy RigidTransform: camera -> rig
    scale: np.ndarray  # (2,) x and y
    vehicle_width: float | None = None

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) pixels of rig-frame points (N, 3) in the frame drawn on, and which lie in
        front of the lens; pixels of the others are meaningless."""
        camera = self.pose.inv().apply(np.asarray(points, dtype=np.float64))
        ahead = camera[:, 2] > NEAR_M
        safe = np.where(ahead[:, None], camera, [0.0, 1e-6, 1.0])  # pixels of no use
        return self.model.ray2pixel(safe) * self.scale, ahead


def camera_view(calibration: str, width: int, height: int) -> CameraView:
    """The CameraView of a record's calibration (JSON, see prepare/rawdata.py) for a frame of
    width x height; NoOverlay says why there is none."""
    from physical_ai_av.calibration import CameraIntrinsics, SensorExtrinsics

    if not calibration:
        raise NoOverlay("the dataset has no calibration for this clip")
    try:
        found = json.loads(calibration)
        camera = found["camera"]
        intrinsics = pd.DataFrame([found["camera_intrinsics"]], index=[camera])
        extrinsics = pd.DataFrame([found["sensor_extrinsics"]], index=[camera])
        model = CameraIntrinsics.from_intrinsics_df(intrinsics).camera_models[camera]
        pose = SensorExtrinsics.from_extrinsics_df(extrinsics).sensor_poses[camera]
    except (ValueError, KeyError, TypeError) as err:
        raise NoOverlay(f"its calibration does not read ({err})") from None
    axis = pose.rotation.apply([0.0, 0.0, 1.0])
    if not (axis[0] > 0.7 and -0.6 < axis[2] < 0.05):
        raise NoOverlay(
            f"its camera's optical axis points ({axis[0]:.2f}, {axis[1]:.2f}, {axis[2]:.2f}) in "
            "the rig frame, not forward and a little down: its extrinsics do not read as the "
            "camera's pose on the rig"
        )
    scale = np.array([width / model.width, height / model.height])
    return CameraView(model, pose, scale, found.get("vehicle_width"))


def ground_path(pairs: np.ndarray) -> np.ndarray:
    """(31, 3) rig-frame points on the ground: the rear axle now, then one per future frame."""
    pairs = np.asarray(pairs, dtype=np.float64)
    xy = np.vstack([[0.0, 0.0], integrate_unicycle(pairs[:, 0], pairs[:, 1])])
    return np.column_stack([xy, np.zeros(len(xy))])


def _offset(path: np.ndarray, side: float) -> np.ndarray:
    """The path moved `side` metres to its left (negative: right), square to its heading."""
    step = np.diff(path[:, :2], axis=0, prepend=path[:1, :2])
    step[0] = step[1] if len(step) > 1 else [1.0, 0.0]
    heading = np.arctan2(step[:, 1], step[:, 0])
    shifted = path.copy()
    shifted[:, 0] -= side * np.sin(heading)
    shifted[:, 1] += side * np.cos(heading)
    return shifted


def _visible_segments(view: CameraView, points: np.ndarray) -> list[tuple[tuple, tuple]]:
    """Pixel line segments between consecutive path points, each cut at the lens's near plane
    where it passes behind the camera (the image border clips the rest)."""
    camera = view.pose.inv().apply(points)
    segments = []
    for start, end in zip(camera[:-1], camera[1:], strict=True):
        if start[2] <= NEAR_M and end[2] <= NEAR_M:
            continue
        if start[2] <= NEAR_M or end[2] <= NEAR_M:
            cut = (NEAR_M - start[2]) / (end[2] - start[2])
            crossing = start + cut * (end - start)
            start, end = (crossing, end) if start[2] <= NEAR_M else (start, crossing)
        pixels = view.model.ray2pixel(np.stack([start, end])) * view.scale
        segments.append((tuple(pixels[0]), tuple(pixels[1])))
    return segments


CAPTION_COLOUR = (255, 255, 255)
LINE_PX = 12  # a line of the default font


def draw_paths(
    frame: np.ndarray,
    view: CameraView | None,
    paths: list[tuple[str, np.ndarray, tuple[int, int, int]]],
    caption: str = "",
    lane: bool = True,
):
    """The frame (H, W, 3 uint8) as a PIL image with each (name, 30 pairs, colour) path drawn:
    its line, a dot every 0.1 s, and (with `lane` and the vehicle's width known) the band the
    car sweeps. Without a view the frame is drawn plain, its caption saying why."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(frame)).convert("RGB")
    draw = ImageDraw.Draw(image)
    width, height = image.size
    scale = max(1.0, min(width, height) / 200)
    if view is not None:
        for _, pairs, colour in paths:
            path = ground_path(pairs)
            if lane and view.vehicle_width:
                for side in (view.vehicle_width / 2, -view.vehicle_width / 2):
                    for a, b in _visible_segments(view, _offset(path, side)):
                        draw.line([a, b], fill=colour, width=max(1, round(scale / 2)))
            for a, b in _visible_segments(view, path):
                draw.line([a, b], fill=colour, width=max(1, round(scale)))
            pixels, ahead = view.project(path[DOT_EVERY::DOT_EVERY])
            radius = 1.5 * scale
            for (u, v), seen in zip(pixels, ahead, strict=True):
                if seen and 0 <= u < width and 0 <= v < height:
                    draw.ellipse([u - radius, v - radius, u + radius, v + radius], fill=colour)
    lines = [(text, CAPTION_COLOUR) for text in wrapped(draw, caption, width - 8)]
    lines += [(name, colour) for name, _, colour in paths] if view is not None else []
    for row, (text, colour) in enumerate(lines):
        draw.text((4 + 1, 4 + LINE_PX * row + 1), text, fill=(0, 0, 0))
        draw.text((4, 4 + LINE_PX * row), text, fill=colour)
    return image


def wrapped(draw, text: str, width: float) -> list[str]:
    """`text` in lines that each fit `width` pixels in the draw's font: broken between words,
    and inside a word only where the word alone is wider."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while draw.textlength(word) > width and len(word) > 1:
            fits = (i for i in range(len(word) - 1, 0, -1) if draw.textlength(word[:i]) <= width)
            cut = next(fits, 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def last_frame(video: str) -> np.ndarray:
    """The last frame of a segment's video, at the size it was written."""
    from qwenvl.video import decode_video

    frames, _ = decode_video(video)
    return frames[-1]
