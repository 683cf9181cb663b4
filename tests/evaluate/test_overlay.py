"""The path overlay: projection through the devkit's camera models checked by hand, against the
devkit's own ray2pixel, and against where the synthetic renderer put the ground; nothing drawn
behind the camera or through a calibration that fails the convention check."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from qwenvl.evaluate import overlay
from qwenvl.prepare import rawdata
from qwenvl.prepare.labels import yaw_from_quaternion
from qwenvl.prepare.writer import Cut, process_clip
from qwenvl.standins.render import (
    CAMERA_FORWARD_M,
    CAMERA_HEIGHT_M,
    SyntheticCamera,
    ground_points,
)
from qwenvl.standins.synthetic import write_synthetic_dataset
from qwenvl.trajectory import integrate_unicycle


def _pose(pitch_deg: float, forward: float, height: float):
    """A rig-from-camera RigidTransform of a camera pitched down, as SyntheticCamera builds it."""
    from scipy.spatial.transform import RigidTransform, Rotation

    p = math.radians(pitch_deg)
    axes = np.array(
        [[0.0, -1.0, 0.0], [-math.sin(p), 0.0, -math.cos(p)], [math.cos(p), 0.0, -math.sin(p)]]
    ).T
    return RigidTransform.from_components([forward, 0.0, height], Rotation.from_matrix(axes))


def synthetic_calibration(width: int, height: int) -> str:
    camera = SyntheticCamera(width, height)
    return json.dumps(
        {
            "camera": rawdata.DEFAULT_CAMERA,
            "camera_intrinsics": camera.intrinsics(),
            "sensor_extrinsics": camera.extrinsics(),
            "vehicle_width": 1.9,
        }
    )


def test_ground_point_ahead_lands_on_the_hand_computed_pixel():
    """An equidistant f-theta camera (pixel radius = f x angle off the axis) 1.5 m up, pitched
    8 degrees down, read from a calibration in the dataset's schema: a ground point straight
    ahead lies in the vertical plane of the axis, so it lands on the middle column, below the
    centre by f x (its depression less the pitch). (The devkit's PinholeCameraModel.ray2pixel
    does not divide by depth, so pinhole rows are never read through it; the dataset's
    cameras are f-theta, which CameraIntrinsics builds by default.)"""
    from scipy.spatial.transform import Rotation

    f, cx, cy, height, pitch = 300.0, 320.0, 240.0, 1.5, 8.0
    intrinsics = {"width": 640, "height": 480, "cx": cx, "cy": cy}
    intrinsics.update({f"fw_poly_{i}": f * (i == 1) for i in range(5)})
    intrinsics.update({f"bw_poly_{i}": (i == 1) / f for i in range(5)})
    rotation = Rotation.from_matrix(_pose(pitch, 0.0, height).rotation.as_matrix())
    extrinsics = dict(zip(("qx", "qy", "qz", "qw"), rotation.as_quat(), strict=True))
    extrinsics.update(x=0.0, y=0.0, z=height)
    calibration = json.dumps(
        {"camera": "cam", "camera_intrinsics": intrinsics, "sensor_extrinsics": extrinsics}
    )
    view = overlay.camera_view(calibration, 640, 480)
    for distance in (5.0, 12.0, 40.0):
        pixels, ahead = view.project(np.array([[distance, 0.0, 0.0]]))
        below = math.atan(height / distance) - math.radians(pitch)
        assert ahead[0]
        assert pixels[0] == pytest.approx([cx, cy + f * below], abs=1e-6)
    # The horizon (a point far ahead at the camera's height) lies above the centre by the pitch.
    pixels, _ = view.project(np.array([[1e6, 0.0, height]]))
    assert pixels[0] == pytest.approx([cx, cy - f * math.radians(pitch)], abs=1e-3)


def test_ftheta_projection_is_the_devkits_ray2pixel_of_the_same_ray():
    from physical_ai_av.utils.camera_models import FThetaCameraModel

    camera = SyntheticCamera(320, 180)
    view = overlay.camera_view(synthetic_calibration(320, 180), 320, 180)
    points = np.array([[4.0, 1.0, 0.0], [10.0, -3.0, 0.0], [30.0, 6.0, 0.5]])
    pixels, ahead = view.project(points)
    rays = (points - [CAMERA_FORWARD_M, 0.0, CAMERA_HEIGHT_M]) @ camera.rotation()
    devkit = FThetaCameraModel.from_camera_row(pd.Series(camera.intrinsics()))
    assert ahead.all()
    assert pixels == pytest.approx(devkit.ray2pixel(rays), abs=1e-9)
    # Equidistant: the radius from the centre is f times the ray's angle off the axis.
    angle = np.arccos(rays[:, 2] / np.linalg.norm(rays, axis=1))
    radius = np.linalg.norm(pixels - [160.0, 90.0], axis=1)
    assert radius == pytest.approx(camera.focal * angle, rel=1e-6)
    # A frame drawn at half the calibration's size scales the pixels with it.
    half = overlay.camera_view(synthetic_calibration(320, 180), 160, 90)
    assert half.project(points)[0] == pytest.approx(pixels / 2)


def _coloured(image, colour) -> np.ndarray:
    pixels = np.asarray(image).astype(int)
    return (np.abs(pixels - colour).sum(axis=-1) < 30)[24:]  # below the legend


def test_points_behind_the_camera_are_never_drawn():
    view = overlay.camera_view(synthetic_calibration(320, 180), 320, 180)
    frame = np.zeros((180, 320, 3), dtype=np.uint8)
    reversing = np.column_stack([np.full(30, -6.0), np.zeros(30)])
    image = overlay.draw_paths(frame, view, [("p", reversing, overlay.PREDICTED_COLOUR)])
    assert not _coloured(image, overlay.PREDICTED_COLOUR).any()
    _, ahead = view.project(overlay.ground_path(reversing))
    assert not ahead.any()
    forward = np.column_stack([np.full(30, 12.0), np.full(30, 0.01)])
    image = overlay.draw_paths(frame, view, [("p", forward, overlay.PREDICTED_COLOUR)])
    drawn = _coloured(image, overlay.PREDICTED_COLOUR)
    assert drawn.sum() > 30
    rows = np.nonzero(drawn.any(axis=1))[0] + 24
    assert rows.min() > 90  # on the ground, below the horizon


def test_a_calibration_that_is_not_the_cameras_pose_on_the_rig_gets_no_overlay():
    found = json.loads(synthetic_calibration(320, 180))
    # The same camera looking backwards: its extrinsics do not read as the convention says.
    from scipy.spatial.transform import Rotation

    turned = Rotation.from_euler("z", 180, degrees=True) * Rotation.from_quat(
        [found["sensor_extrinsics"][k] for k in ("qx", "qy", "qz", "qw")]
    )
    found["sensor_extrinsics"].update(zip(("qx", "qy", "qz", "qw"), turned.as_quat(), strict=True))
    with pytest.raises(overlay.NoOverlay, match="optical axis points"):
        overlay.camera_view(json.dumps(found), 320, 180)
    with pytest.raises(overlay.NoOverlay, match="no calibration"):
        overlay.camera_view("", 320, 180)
    frame = np.zeros((180, 320, 3), dtype=np.uint8)
    plain = overlay.draw_paths(frame, None, [("p", np.ones((30, 2)), overlay.PREDICTED_COLOUR)])
    assert not _coloured(plain, overlay.PREDICTED_COLOUR).any()


def test_true_path_at_one_second_lands_where_the_renderer_put_that_ground(tmp_path):
    """Segments written at half the source's width; the labels' path at 1 s, projected through
    the clip's calibration as segmenting stored it, lands within 2 pixels of the pixel whose
    rendered ground is where the car truly is 1 s later (its egomotion)."""
    root = tmp_path / "raw"
    write_synthetic_dataset(
        root, num_clips=1, clip_seconds=8, width=320, height=180, seed=7, progress=False
    )
    dataset = rawdata.RawDataset(root)
    clip_id, chunk = dataset.clip_index.index[0], int(dataset.clip_index["chunk"].iloc[0])
    result = process_clip(dataset, clip_id, chunk, tmp_path / "seg", Cut(max_width=160))
    rows, calibration = result["rows"], result["calibration"]
    view = overlay.camera_view(calibration, rows[0]["width"], rows[0]["height"])
    assert (rows[0]["width"], rows[0]["height"]) == (160, 90)
    ground, near = ground_points(SyntheticCamera(320, 180))
    frames = dataset.frame_timestamps(clip_id, chunk).to_numpy()
    egomotion = dataset.egomotion(clip_id, chunk)
    checked = 0
    for row in rows:
        last = int(np.searchsorted(frames, row["frame_timestamps_us"][-1]))
        times = frames[[last, last + 30]]
        x, y = (np.interp(times, egomotion["timestamp"], egomotion[c]) for c in ("x", "y"))
        yaws = np.interp(
            times,
            egomotion["timestamp"],
            np.unwrap(yaw_from_quaternion(egomotion[["qx", "qy", "qz", "qw"]].to_numpy())),
        )
        c, s = math.cos(yaws[0]), math.sin(yaws[0])
        dx, dy = x[1] - x[0], y[1] - y[0]
        truth = np.array([c * dx + s * dy, -s * dx + c * dy])  # in the rig frame at the last frame
        if truth[0] < 4.0:
            continue  # too near: under the bonnet of the fisheye
        # The renderer's pixel for that ground spot (at the source's size).
        distance = np.linalg.norm(ground - truth, axis=-1)
        distance[~near] = np.inf
        r, col = np.unravel_index(np.argmin(distance), distance.shape)
        rendered = (np.array([col, r]) + 0.5) / 2  # in the half-size segment
        path = integrate_unicycle(np.array(row["future_speed"]), np.array(row["future_curvature"]))
        pixels, ahead = view.project(np.array([[*path[-1], 0.0]]))
        assert ahead[0]
        assert np.linalg.norm(pixels[0] - rendered) < 2.0, (row["segment_index"], truth)
        checked += 1
    assert checked >= 3
