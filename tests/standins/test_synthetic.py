"""Synthetic raw-layout data: hand-checked ego motion, file layout and schemas, determinism."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from qwenvl.prepare import rawdata
from qwenvl.prepare.labels import forward_speed, yaw_from_quaternion
from qwenvl.prepare.rawdata import EGOMOTION_COLUMNS
from qwenvl.standins.motion import (
    camera_timestamps,
    constant_profile,
    egomotion_timestamps,
    random_profile,
    synthesize_egomotion,
)
from qwenvl.standins.render import GroundRenderer, SyntheticCamera, ground_texture
from qwenvl.standins.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
SMALL = {"clip_seconds": 2, "width": 160, "height": 96, "progress": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> rawdata.RawDataset:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, num_clips=3, seed=7, chunk_size=2, **SMALL)
    return rawdata.RawDataset(root)


def decoded_frames(video: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def random_clip_egomotion(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    profile = random_profile(rng, 20.0)
    stamps = egomotion_timestamps(rng, 20.0, camera_timestamps(rng, 20.0))
    return synthesize_egomotion(stamps, profile.speed, profile.curvature)


def longest_run(mask: np.ndarray) -> int:
    padded = np.concatenate([[0], mask.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def test_constant_left_turn_follows_the_hand_computed_circle():
    # 10 m/s at curvature +0.01 drives a circle of radius 100 m centred at (0, 100).
    stamps = np.arange(-50_000, 20_000_001, 10_000, dtype=np.int64)
    profile = constant_profile(10.0, 0.01)
    ego = synthesize_egomotion(stamps, profile.speed, profile.curvature)
    x, y = ego["x"].to_numpy(), ego["y"].to_numpy()
    assert np.abs(np.hypot(x, y - 100.0) - 100.0).max() < 0.02
    origin = ego[ego["timestamp"] == 0].iloc[0]
    assert origin[["x", "y", "z", "qx", "qy", "qz"]].abs().max() < 1e-9
    assert origin["qw"] == pytest.approx(1.0)
    at_5s = ego[ego["timestamp"] == 5_000_000].iloc[0]  # heading 10 * 0.01 * 5 = 0.5 rad
    assert at_5s["x"] == pytest.approx(100 * math.sin(0.5), abs=0.01)
    assert at_5s["y"] == pytest.approx(100 * (1 - math.cos(0.5)), abs=0.01)
    assert (y[stamps > 100_000] > 0).all()
    yaw = np.unwrap(yaw_from_quaternion(ego[["qx", "qy", "qz", "qw"]].to_numpy()))
    assert (np.diff(yaw) > 0).all()
    assert yaw[-1] - yaw[stamps == 0][0] == pytest.approx(2.0, abs=1e-4)
    # Anchor-frame velocity at t = 0 points forward; centripetal acceleration v^2 k points left.
    assert origin[["vx", "vy", "ax", "ay"]].tolist() == pytest.approx([10, 0, 0, 1], abs=1e-6)
    assert forward_speed(ego) == pytest.approx(np.full(len(ego), 10.0))
    assert (ego["curvature"] == 0.01).all()


@pytest.mark.parametrize("seed", [1, 3])
def test_curvature_column_is_yaw_rate_over_speed(seed: int):
    ego = random_clip_egomotion(seed)
    t = ego["timestamp"].to_numpy() * 1e-6
    yaw = np.unwrap(yaw_from_quaternion(ego[["qx", "qy", "qz", "qw"]].to_numpy()))
    yaw_rate = np.diff(yaw) / np.diff(t)
    speed = forward_speed(ego)
    mid_speed = 0.5 * (speed[1:] + speed[:-1])
    mid_curvature = ego["curvature"].rolling(2).mean().to_numpy()[1:]
    moving = np.abs(mid_speed) > 0.5
    assert moving.sum() > 1000
    if seed == 3:  # this profile reverses: the sign of the curvature must survive v < 0
        assert (mid_speed[moving] < 0).sum() > 50
    np.testing.assert_allclose(
        yaw_rate[moving] / mid_speed[moving], mid_curvature[moving], atol=2e-5
    )


@pytest.mark.parametrize("seed", [1, 3])
def test_velocity_and_acceleration_integrate_to_the_pose(seed: int):
    ego = random_clip_egomotion(seed)
    ego = ego[ego["timestamp"] <= 20_200_000]  # the 100 Hz part; the sparse tail is too coarse
    t = ego["timestamp"].to_numpy() * 1e-6
    dt = np.diff(t)
    for pos, vel, acc in (("x", "vx", "ax"), ("y", "vy", "ay")):
        p, v, a = (ego[c].to_numpy() for c in (pos, vel, acc))
        integrated = p[0] + np.concatenate([[0.0], np.cumsum(0.5 * dt * (v[1:] + v[:-1]))])
        assert np.abs(integrated - p).max() < 0.01
        np.testing.assert_allclose(np.diff(v) / dt, 0.5 * (a[1:] + a[:-1]), atol=0.01)
    assert abs(np.interp(0.0, t, ego["x"])) < 1e-3 and abs(np.interp(0.0, t, ego["y"])) < 1e-3


def test_random_profiles_stop_reverse_and_turn_both_ways():
    t = np.arange(0.0, 20.0, 0.01)
    speeds, curvatures = [], []
    for seed in range(5):
        profile = random_profile(np.random.default_rng(seed), 20.0)
        speeds.append(profile.speed(t))
        curvatures.append(profile.curvature(t))
    speed, curvature = np.concatenate(speeds), np.concatenate(curvatures)
    assert max(longest_run(s == 0.0) for s in speeds) >= 100  # a stop of 1 s or more
    assert max(longest_run(s < -1.0) for s in speeds) >= 50  # a reverse stretch
    assert speed.min() >= -3.0 and 10.0 < speed.max() <= 20.0
    assert curvature.max() > 0.01 and curvature.min() < -0.01
    assert np.abs(curvature).max() <= 0.05
    # Smooth: no jumps in speed anywhere, including through 0 into and out of reverse.
    assert max(np.abs(np.diff(s)).max() for s in speeds) < 0.05


def _clips(dataset: rawdata.RawDataset):
    return [(clip_id, int(chunk)) for clip_id, chunk in dataset.clip_index["chunk"].items()]


def test_files_have_the_documented_layout_columns_and_dtypes(dataset: rawdata.RawDataset):
    root = dataset.root
    # The clip index as NVIDIA ships it: clip_id is the index, not a column.
    index = pd.read_parquet(root / rawdata.CLIP_INDEX)
    assert index.index.name == "clip_id" and pd.api.types.is_string_dtype(index.index)
    assert list(index.columns) == ["chunk", "split", "clip_is_valid"]
    assert index["chunk"].dtype == np.int64 and index["chunk"].tolist() == [0, 0, 1]
    assert set(index["split"]) <= {"train", "val", "test"} and index["clip_is_valid"].all()
    features = pd.read_csv(root / rawdata.FEATURES_CSV, index_col="feature")
    assert list(features.columns) == ["directory", "chunk_path", "clip_files_in_zip"]
    camera = rawdata.DEFAULT_CAMERA
    assert features.at[camera, "chunk_path"] == (
        f"camera/{camera}/{camera}.chunk_{{chunk_id:04d}}.zip"
    )
    presence = pd.read_parquet(root / rawdata.FEATURE_PRESENCE[0])
    assert presence.index.equals(index.index) and presence[camera].all()
    assert presence["egomotion"].all() and presence["vehicle_dimensions"].all()
    assert pd.read_parquet(root / rawdata.DATA_COLLECTION).index.equals(index.index)
    for chunk, clips in index.groupby("chunk"):
        camera_zip = f"camera/{camera}/{camera}.chunk_{chunk:04d}.zip"
        with zipfile.ZipFile(root / camera_zip) as archive:
            names = {
                f"{clip_id}.{camera}.{suffix}"
                for clip_id in clips.index
                for suffix in ("mp4", "timestamps.parquet", "blurred_boxes.parquet")
            }
            assert set(archive.namelist()) == names
        with zipfile.ZipFile(root / f"labels/egomotion/egomotion.chunk_{chunk:04d}.zip") as archive:
            assert set(archive.namelist()) == {f"{c}.egomotion.parquet" for c in clips.index}
        # The calibration tables as the devkit reads them: f-theta intrinsics and the camera's
        # pose per (clip_id, sensor), the vehicle's dimensions per clip.
        tables = {
            kind: pd.read_parquet(root / f"calibration/{kind}/{kind}.chunk_{chunk:04d}.parquet")
            for kind in rawdata.CALIBRATION_FEATURES
        }
        intrinsics, extrinsics = tables["camera_intrinsics"], tables["sensor_extrinsics"]
        polys = [f"{side}_poly_{i}" for side in ("fw", "bw") for i in range(5)]
        assert set(intrinsics.columns) >= {"width", "height", "cx", "cy", *polys}
        for table in (intrinsics, extrinsics):
            assert table.index.names == ["clip_id", "sensor"]
            assert table.index.get_level_values("clip_id").tolist() == clips.index.tolist()
            assert (table.index.get_level_values("sensor") == camera).all()
        assert set(extrinsics.columns) == set(rawdata.POSE)
        assert intrinsics[["width", "height"]].dtypes.tolist() == [np.int64] * 2
        assert intrinsics.iloc[0][["width", "height", "cx", "cy"]].tolist() == [160, 96, 80, 48]
        # Equidistant f-theta: 60 degrees off the axis reaches the image's side.
        focal = 80 / math.radians(60)
        assert intrinsics.iloc[0]["fw_poly_1"] == pytest.approx(focal)
        assert intrinsics.iloc[0]["bw_poly_1"] == pytest.approx(1 / focal)
        assert tables["vehicle_dimensions"].index.tolist() == clips.index.tolist()
        assert (tables["vehicle_dimensions"]["width"] > 1.5).all()


def test_egomotion_is_100hz_with_a_sparse_tail_and_not_aligned(dataset: rawdata.RawDataset):
    for clip_id, chunk in _clips(dataset):
        ego = dataset.egomotion(clip_id, chunk)
        assert list(ego.columns) == list(EGOMOTION_COLUMNS)
        assert ego.dtypes.astype(str).to_dict() == EGOMOTION_COLUMNS
        frames = dataset.frame_timestamps(clip_id, chunk).to_numpy()
        stamps = ego["timestamp"].to_numpy()
        dense = stamps[stamps <= 2_201_000]  # 2 s clips: ~100 Hz from -0.2 s to 2.2 s
        steps = np.diff(dense)
        assert steps.min() > 9_000 and steps.max() < 11_000 and steps.std() > 0
        assert -211_000 < dense[0] <= -199_000 and dense[-1] > frames[-1]
        sparse = np.diff(stamps[stamps >= dense[-1]])
        assert sparse.min() >= 70_000 and sparse.max() < 80_000
        assert 2e6 + 12.9e6 < stamps[-1] <= 2e6 + 13e6
        assert not np.isin(frames, stamps).any()
        # Where frames fall between egomotion samples varies: the clocks are not locked.
        j = np.searchsorted(stamps, frames) - 1
        phase = (frames - stamps[j]) / (stamps[j + 1] - stamps[j])
        assert phase.std() > 0.2


def test_video_frames_match_the_jittered_timestamps(dataset: rawdata.RawDataset):
    for clip_id, chunk in _clips(dataset):
        stamps = dataset.frame_timestamps(clip_id, chunk)
        assert stamps.dtype == np.int64 and len(stamps) == 65  # 2 s at 30 FPS + 5
        frames = decoded_frames(dataset.video_bytes(clip_id, chunk))
        assert len(frames) == len(stamps)
        assert frames[0].shape == (96, 160, 3)
        offsets = stamps.to_numpy() - (np.arange(len(stamps)) * 1e6 / 30 - 14_000)
        assert np.abs(offsets).max() <= 2_000 and offsets.std() > 300
        assert (np.diff(stamps) > 0).all()
        with av.open(io.BytesIO(dataset.video_bytes(clip_id, chunk))) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == 30 and stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"


def test_twenty_second_clip_has_605_frames_from_about_minus_14_ms():
    stamps = camera_timestamps(np.random.default_rng(0), 20)
    assert len(stamps) == 605 and stamps.dtype == np.int64
    assert -15_500 <= stamps[0] <= -12_500 and 20.1e6 < stamps[-1] < 20.14e6
    assert np.abs(stamps - (np.round(np.arange(605) * 1e6 / 30) - 14_000)).max() <= 1_500
    assert (np.diff(stamps) > 0).all()


def test_renderer_sees_a_world_fixed_ground():
    renderer = GroundRenderer(160, 96, ground_texture(np.random.default_rng(0)))
    start = renderer.render(0.0, 0.0, 0.0)
    assert np.array_equal(start, renderer.render(0.0, 0.0, 0.0))
    assert np.array_equal(start, renderer.render(64.0, -64.0, 0.0))  # the ground tile is 64 m
    moved, turned = renderer.render(0.3, 0.0, 0.0), renderer.render(0.0, 0.0, 0.05)
    ground = np.zeros(160 * 96, dtype=bool)
    ground[renderer.geometry.pixels] = True
    sky = ~ground.reshape(96, 160)
    assert sky[0].all() and not sky[-1].any()  # sky above, ground below
    for other in (moved, turned):
        assert np.array_equal(other[sky], start[sky])  # the sky does not move
        assert (other != start).any(axis=-1).mean() > 0.2  # the ground does


def test_renderer_draws_through_the_calibration_it_writes():
    """A pixel's ground point, as the renderer uses it, projects back onto that pixel through
    the devkit's model of the written calibration; a ground point straight ahead lands on the
    image's middle column, below the horizon."""
    from qwenvl.standins.render import ground_points

    camera = SyntheticCamera(160, 96)
    ground, near = ground_points(camera)
    rows, columns = np.nonzero(near)
    pick = np.linspace(0, len(rows) - 1, 25).astype(int)
    points = np.column_stack(
        [ground[rows[pick], columns[pick]], np.zeros(len(pick))]
    )  # rig frame, on the ground
    rotation = camera.rotation()
    in_camera = (points - [1.5, 0.0, 1.5]) @ rotation
    pixels = camera.model().ray2pixel(in_camera)
    assert pixels == pytest.approx(np.column_stack([columns[pick], rows[pick]]) + 0.5, abs=1e-6)
    ahead = camera.model().ray2pixel((np.array([[10.0, 0.0, 0.0]]) - [1.5, 0.0, 1.5]) @ rotation)
    assert ahead[0, 0] == pytest.approx(80.0) and ahead[0, 1] > 48.0


def test_same_seed_same_data_other_seed_other_data(dataset: rawdata.RawDataset, tmp_path: Path):
    write_synthetic_dataset(tmp_path / "same", num_clips=1, seed=7, **SMALL)
    write_synthetic_dataset(tmp_path / "other", num_clips=1, seed=8, **SMALL)
    clip_id, chunk = _clips(dataset)[0]
    first = rawdata.RawDataset(tmp_path / "same").clip_index.index[0]
    clips = {name: rawdata.RawDataset(tmp_path / name) for name in ("same", "other")}
    other_id = clips["other"].clip_index.index[0]
    assert first == clip_id != other_id
    ego = dataset.egomotion(clip_id, chunk)
    pd.testing.assert_frame_equal(clips["same"].egomotion(clip_id, 0), ego)
    assert not clips["other"].egomotion(other_id, 0)["x"].equals(ego["x"])
    assert clips["same"].video_bytes(clip_id, 0) == dataset.video_bytes(clip_id, chunk)
    frames = decoded_frames(dataset.video_bytes(clip_id, chunk))
    same = decoded_frames(clips["same"].video_bytes(clip_id, 0))
    other = decoded_frames(clips["other"].video_bytes(other_id, 0))
    assert all(np.array_equal(a, b) for a, b in zip(frames, same, strict=True))
    assert not np.array_equal(frames[-1], other[-1])


def run_script(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "scripts/make_synthetic_data.py", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_script_writes_atomically_and_refuses_to_overwrite(tmp_path: Path):
    output = tmp_path / "data"
    flags = ["--output-dir", str(output), "--num-clips", "1", "--clip-seconds", "1"]
    flags += ["--width", "32", "--height", "32", "--no-progress"]
    done = run_script(*flags)
    assert done.returncode == 0, done.stderr
    assert rawdata.RawDataset(output).clip_index["chunk"].tolist() == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging left behind
    refused = run_script(*flags)
    assert refused.returncode == 2
    assert "not empty" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    (output / "stale.txt").write_text("old")
    replaced = run_script(*flags, "--overwrite-output", "--seed", "1")
    assert replaced.returncode == 0, replaced.stderr
    assert not (output / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
