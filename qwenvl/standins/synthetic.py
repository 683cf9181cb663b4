"""Synthetic raw-layout driving clips: smooth random ego motion and a rendered ground plane."""

from __future__ import annotations

import io
import math
import os
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import pandas as pd
from tqdm import tqdm

from qwenvl.prepare import rawdata
from qwenvl.prepare.labels import quaternion_from_yaw, yaw_from_quaternion
from qwenvl.prepare.rawdata import EGOMOTION_COLUMNS

FPS = 30
# Timing of a real front-wide clip: 605 frames over a nominal 20 s, the first about 14 ms
# before the clip clock's zero; egomotion every ~10 ms from -0.2 s to 0.2 s past the nominal
# end, then every 70-80 ms out to ~13 s beyond it.
FIRST_FRAME_US = -14_000
EXTRA_FRAMES = 5
EGO_PERIOD_US = 10_000
EGO_JITTER_US = 200
EGO_DENSE_MARGIN_US = 200_000
EGO_SPARSE_PERIOD_US = (70_000, 80_000)
EGO_SPARSE_SPAN_US = 13_000_000
CAMERA_JITTER_US = 1_500
FINE_STEP_US = 1_000  # integration grid: fine enough that trapezoid error is sub-millimetre
MAX_SPEED = 20.0
MAX_CURVATURE = 0.05
MAX_LATERAL_ACCEL = 3.0  # m/s^2; keeps sharp curvature to low speeds like a real car

# The front wide camera as rendered: an f-theta (fisheye) lens of 120 degrees across, 1.5 m
# ahead of the rear axle and 1.5 m up, pitched a little down so the ground fills the frame.
CAMERA_HEIGHT_M = 1.5
CAMERA_FORWARD_M = 1.5
CAMERA_HFOV_DEG = 120.0
CAMERA_PITCH_DEG = 6.0
# The vehicle's dimensions as the dataset records them (metres): a mid-size car.
VEHICLE_DIMENSIONS = {
    "length": 4.8, "width": 1.9, "height": 1.5, "rear_axle_to_bbox_center": 1.4,
    "wheelbase": 2.9, "track_width": 1.6,
}  # fmt: skip
GROUND_RANGE_M = 120.0  # rows seeing ground farther than this get the flat haze colour
TEXEL_M = 0.125
TEXTURE_SIZE = 512  # texels per side: a 64 m tile, a power of two so wrapping is a bit mask
TILE_M = TEXEL_M * TEXTURE_SIZE
MIP_LEVELS = 6
SKY_TOP = (70, 120, 190)
SKY_HORIZON = (190, 205, 220)

_BOX_COLUMNS = {"timestamp": "int64", **dict.fromkeys(("x0", "y0", "x1", "y1"), "float32")}

TimeFn = Callable[[np.ndarray], np.ndarray]  # seconds -> value, vectorised


# --------------------------------------------------------------------------- motion profile


@dataclass(frozen=True)
class SmoothSteps:
    """Scalar function of time (s): smootherstep ramps between knots, constant outside them.

    Equal neighbouring values give an exact hold (a stop is speed exactly 0). The ramps have
    zero first and second derivative at every knot, so speed has a continuous acceleration
    and jerk (peak slope 1.875 * change / ramp time).
    """

    times: np.ndarray
    values: np.ndarray

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        i = np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, len(self.times) - 2)
        t0, t1 = self.times[i], self.times[i + 1]
        s = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
        v0, v1 = self.values[i], self.values[i + 1]
        return v0 + (v1 - v0) * (s * s * s * (10.0 + s * (6.0 * s - 15.0)))


@dataclass(frozen=True)
class MotionProfile:
    """Forward speed (m/s, negative = reverse) and signed curvature (1/m, + = left) over time."""

    speed: TimeFn
    curvature: TimeFn


def constant_profile(speed: float, curvature: float) -> MotionProfile:
    """A profile holding one speed and one curvature for all time (for hand-checkable tests)."""
    return MotionProfile(
        speed=lambda t: np.full(np.shape(t), float(speed)),
        curvature=lambda t: np.full(np.shape(t), float(curvature)),
    )


@dataclass
class _Knots:
    """Builds SmoothSteps knot lists as a sequence of (ramp to value, hold) moves."""

    t: float
    value: float
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.times.append(self.t)
        self.values.append(self.value)

    def move(self, target: float, ramp_s: float, hold_s: float) -> None:
        for dt in (ramp_s, hold_s):
            self.t += dt
            self.times.append(self.t)
            self.values.append(target)
        self.value = target

    def build(self) -> SmoothSteps:
        return SmoothSteps(np.array(self.times), np.array(self.values))


def _random_speed(rng: np.random.Generator, end_s: float) -> SmoothSteps:
    start = 0.0 if rng.random() < 0.2 else rng.uniform(4.0, MAX_SPEED)
    knots = _Knots(t=-2.0, value=start)  # start early: egomotion begins before t = 0
    while knots.t < end_s:
        if knots.value > 0 and rng.random() < 0.4:
            # Brake at a plausible deceleration, then stand still for a while.
            ramp = max(1.0, knots.value / 2.5) * rng.uniform(1.0, 1.5)
            knots.move(0.0, ramp, rng.uniform(1.0, 3.0))
            if rng.random() < 0.35:
                # Short reverse: the ramps pass through 0 with zero slope.
                target = -rng.uniform(1.0, 3.0)
                ramp = max(0.7, -target / 2.5) * rng.uniform(1.0, 1.2)
                knots.move(target, ramp, rng.uniform(0.1, 0.5))
                knots.move(0.0, ramp, rng.uniform(0.5, 1.5))
        else:
            target = rng.uniform(2.0, MAX_SPEED)
            ramp = max(1.5, abs(target - knots.value) / 2.5) * rng.uniform(1.0, 1.5)
            knots.move(target, ramp, rng.uniform(0.5, 3.0))
    return knots.build()


def _random_curvature(rng: np.random.Generator, end_s: float) -> SmoothSteps:
    knots = _Knots(t=-2.0, value=0.0)
    while knots.t < end_s:
        # Log-uniform magnitudes: mostly gentle bends, sometimes a sharp turn.
        magnitude = math.exp(rng.uniform(math.log(0.002), math.log(MAX_CURVATURE)))
        target = 0.0 if rng.random() < 0.25 else float(rng.choice([-1.0, 1.0])) * magnitude
        knots.move(target, rng.uniform(1.0, 3.0), rng.uniform(0.0, 2.0))
    return knots.build()


def random_profile(rng: np.random.Generator, duration_s: float) -> MotionProfile:
    """Smooth random driving over [0, duration_s]: cruising, stops, turns, the odd short reverse."""
    speed = _random_speed(rng, duration_s + 2.0)
    raw_curvature = _random_curvature(rng, duration_s + 2.0)

    def curvature(t: np.ndarray) -> np.ndarray:
        # Soft limit |k| <= a_max / v^2: identity for gentle bends, smooth near the limit.
        k = raw_curvature(t)
        v = speed(t)
        return k / (1.0 + (k * v * v / MAX_LATERAL_ACCEL) ** 4) ** 0.25

    return MotionProfile(speed=speed, curvature=curvature)


# --------------------------------------------------------------------------- egomotion


def _cumulative_trapezoid(values: np.ndarray, dt: float) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(0.5 * dt * (values[1:] + values[:-1]))])


def _integrate_pose(
    start_us: int, end_us: int, speed_fn: TimeFn, curvature_fn: TimeFn
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t s, x, y, yaw) on a FINE_STEP_US grid covering [start, end] and 0, anchored at t = 0."""
    first = min(math.floor(start_us / FINE_STEP_US), 0)
    last = max(math.ceil(end_us / FINE_STEP_US), 0)
    t = np.arange(first, last + 1) * (FINE_STEP_US * 1e-6)
    zero = -first  # index of t = 0, where the anchor frame puts the origin
    dt = FINE_STEP_US * 1e-6
    v = speed_fn(t)
    yaw = _cumulative_trapezoid(v * curvature_fn(t), dt)
    yaw -= yaw[zero]
    x = _cumulative_trapezoid(v * np.cos(yaw), dt)
    y = _cumulative_trapezoid(v * np.sin(yaw), dt)
    return t, x - x[zero], y - y[zero], yaw


def synthesize_egomotion(
    timestamps_us: np.ndarray, speed_fn: TimeFn, curvature_fn: TimeFn
) -> pd.DataFrame:
    """Egomotion table (EGOMOTION_COLUMNS) of a unicycle driven by (speed, curvature)(t seconds).

    One row per `timestamps_us` (int64 µs, increasing). The pose is the origin with yaw 0 at
    t = 0 (anchor frame: x forward, y left, z up); velocity and acceleration are expressed in
    the anchor frame.
    """
    ts = np.asarray(timestamps_us, dtype=np.int64)
    grid_t, grid_x, grid_y, grid_yaw = _integrate_pose(ts[0], ts[-1], speed_fn, curvature_fn)
    t = ts * 1e-6
    yaw = np.interp(t, grid_t, grid_yaw)
    v = speed_fn(t)
    k = curvature_fn(t)
    h = 1e-3  # central difference step for dv/dt; the profiles are smooth on this scale
    dv = (speed_fn(t + h) - speed_fn(t - h)) / (2.0 * h)
    cos, sin = np.cos(yaw), np.sin(yaw)
    zeros = np.zeros_like(t)
    columns = {"timestamp": ts}
    columns.update(zip(("qx", "qy", "qz", "qw"), quaternion_from_yaw(yaw).T, strict=True))
    columns.update(x=np.interp(t, grid_t, grid_x), y=np.interp(t, grid_t, grid_y), z=zeros)
    columns.update(vx=v * cos, vy=v * sin, vz=zeros)
    # d/dt of (v cos yaw, v sin yaw) with d(yaw)/dt = v * k.
    columns.update(ax=dv * cos - v * v * k * sin, ay=dv * sin + v * v * k * cos, az=zeros)
    columns.update(curvature=k)
    return pd.DataFrame(columns)[list(EGOMOTION_COLUMNS)].astype(EGOMOTION_COLUMNS)


def interpolate_pose(egomotion: pd.DataFrame, timestamps_us: np.ndarray) -> np.ndarray:
    """(N, 3) (x, y, yaw) linearly interpolated at `timestamps_us` (yaw unwrapped first)."""
    ego_t = egomotion["timestamp"].to_numpy(dtype=np.float64)
    t = np.asarray(timestamps_us, dtype=np.float64)
    yaw = np.unwrap(yaw_from_quaternion(egomotion[["qx", "qy", "qz", "qw"]].to_numpy()))
    columns = (egomotion["x"].to_numpy(), egomotion["y"].to_numpy(), yaw)
    return np.stack([np.interp(t, ego_t, c) for c in columns], axis=-1)


def camera_timestamps(rng: np.random.Generator, clip_seconds: float, fps: int = FPS) -> np.ndarray:
    """int64 µs of a clip's frames: frame i at about -14 ms + i / fps, ±1.5 ms of jitter, and
    5 frames past the nominal length (605 for 20 s), as the real camera timestamps run."""
    num_frames = round(clip_seconds * fps) + EXTRA_FRAMES
    nominal = FIRST_FRAME_US + np.round(np.arange(num_frames) * (1e6 / fps)).astype(np.int64)
    jitter = rng.integers(-CAMERA_JITTER_US, CAMERA_JITTER_US + 1, size=num_frames)
    return nominal + jitter


def egomotion_timestamps(
    rng: np.random.Generator, clip_seconds: float, frame_timestamps_us: np.ndarray
) -> np.ndarray:
    """int64 µs: ~100 Hz with jitter from about -0.2 s to 0.2 s past the nominal end, then a
    sparse tail (every 70-80 ms) out to ~13 s beyond it, as in the real egomotion labels.

    The grid has a random phase and never hits a frame exactly, so consumers must interpolate.
    """
    end_us = round(clip_seconds * 1e6)
    start = -EGO_DENSE_MARGIN_US - int(rng.integers(0, EGO_PERIOD_US))
    count = (end_us + EGO_DENSE_MARGIN_US - start) // EGO_PERIOD_US + 1
    jitter = rng.integers(-EGO_JITTER_US, EGO_JITTER_US + 1, size=count)
    dense = start + EGO_PERIOD_US * np.arange(count, dtype=np.int64) + jitter
    gaps = rng.integers(*EGO_SPARSE_PERIOD_US, size=EGO_SPARSE_SPAN_US // EGO_SPARSE_PERIOD_US[0])
    sparse = dense[-1] + np.cumsum(gaps)
    sparse = sparse[sparse <= end_us + EGO_SPARSE_SPAN_US]
    ts = np.concatenate([dense, sparse])
    ts[np.isin(ts, frame_timestamps_us)] += 1
    return ts


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class SyntheticCamera:
    """The rendered front camera, in the dataset's own calibration schema: an f-theta intrinsics
    row (equidistant, the pixel radius f x the ray's angle from the axis, f fitting
    CAMERA_HFOV_DEG across the width) and the camera's pose on the rig. Frames are rendered
    through the devkit's FThetaCameraModel built from that row, so the calibration written
    with a clip is exactly how its pixels were made (pixel centres at integer + 0.5)."""

    width: int
    height: int

    @property
    def focal(self) -> float:
        return (self.width / 2) / math.radians(CAMERA_HFOV_DEG / 2)

    def intrinsics(self) -> dict:
        row = {"width": self.width, "height": self.height}
        row.update(cx=self.width / 2, cy=self.height / 2)
        row.update({f"fw_poly_{i}": float(i == 1) * self.focal for i in range(5)})
        row.update({f"bw_poly_{i}": float(i == 1) / self.focal for i in range(5)})
        return row

    def rotation(self) -> np.ndarray:
        """(3, 3) camera axes (x right, y down, z out of the lens) as rig vectors (x forward,
        y left, z up), pitched CAMERA_PITCH_DEG down."""
        p = math.radians(CAMERA_PITCH_DEG)
        right, down = [0.0, -1.0, 0.0], [-math.sin(p), 0.0, -math.cos(p)]
        return np.array([right, down, [math.cos(p), 0.0, -math.sin(p)]]).T

    def extrinsics(self) -> dict:
        from scipy.spatial.transform import Rotation

        qx, qy, qz, qw = Rotation.from_matrix(self.rotation()).as_quat()
        return dict(qx=qx, qy=qy, qz=qz, qw=qw, x=CAMERA_FORWARD_M, y=0.0, z=CAMERA_HEIGHT_M)

    def model(self):
        from physical_ai_av.utils.camera_models import FThetaCameraModel

        return FThetaCameraModel.from_camera_row(pd.Series(self.intrinsics()))


def _periodic_noise(rng: np.random.Generator, size: int, wavelength_texels: float) -> np.ndarray:
    """Zero-mean unit-std noise that tiles seamlessly (low-passed white noise via the FFT)."""
    f = np.fft.fftfreq(size)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    spectrum = np.fft.fft2(rng.standard_normal((size, size)))
    field_ = np.fft.ifft2(spectrum * np.exp(-f2 * (wavelength_texels**2) * 2.0)).real
    return (field_ - field_.mean()) / field_.std()


def _ground_rgb(rng: np.random.Generator) -> np.ndarray:
    """(N, N, 3) float texture: asphalt with blotches, coloured patches, lanes and cross lines."""
    n = TEXTURE_SIZE
    base = np.array([98.0, 98.0, 104.0]) + rng.uniform(-15, 15, size=3)
    rgb = np.broadcast_to(base, (n, n, 3)).copy()
    rgb += 22.0 * _periodic_noise(rng, n, 40.0)[..., None]
    rgb += 3.0 * _periodic_noise(rng, n, 1.5)[..., None]  # fine grain: texture up close
    patches = _periodic_noise(rng, n, 24.0) > 1.0
    rgb[patches] = 0.5 * rgb[patches] + 0.5 * rng.uniform(40, 200, size=3)
    ix, iy = np.meshgrid(np.arange(n), np.arange(n))  # rows are world y, columns world x
    lanes = (iy % 32 < 2) & (ix % 64 < 24)  # dashed lines every 4 m across, 3 m dash in 8 m
    cross = ix % 128 < 3  # a line across the road every 16 m: forward motion is obvious
    rgb[lanes] = (235, 235, 225)
    rgb[cross] = (220, 200, 60)
    return np.clip(rgb, 0, 255)


def ground_texture(rng: np.random.Generator) -> np.ndarray:
    """(texels, 3) uint8 RGB: a seeded ground tile and its box-filtered mip levels, row-major."""
    rgb = _ground_rgb(rng)
    levels = []
    for _ in range(MIP_LEVELS):
        levels.append(np.round(rgb).astype(np.uint8).reshape(-1, 3))
        n = rgb.shape[0] // 2
        rgb = rgb.reshape(n, 2, n, 2, 3).mean(axis=(1, 3))
    return np.concatenate(levels)


def _mip_offsets() -> np.ndarray:
    sizes = [(TEXTURE_SIZE >> level) ** 2 for level in range(MIP_LEVELS)]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)


def _pixel_rays(camera: SyntheticCamera) -> np.ndarray:
    """(H, W, 3) unit ray directions in the rig frame (x forward, y left, z up) per pixel,
    through the devkit's f-theta model of the camera."""
    columns, rows = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    rays = camera.model().pixel2ray(np.stack([columns, rows], axis=-1))
    return rays @ camera.rotation().T


@dataclass(frozen=True)
class _GroundGeometry:
    """Per-resolution constants: which pixels see the ground, where, and at which mip level."""

    pixels: np.ndarray  # flat indices of the pixels that see the textured ground
    u: np.ndarray  # float32 their ground point along the rig's x axis, in texels of the level
    v: np.ndarray  # the same along y
    scale: np.ndarray  # float32 texels per metre at the pixel's mip level
    mask: np.ndarray  # int32 (texels per side at the level) - 1
    shift: np.ndarray  # int32 log2(texels per side)
    base: np.ndarray  # int32 offset of the level in the packed texture
    elevation: np.ndarray  # (H, W) sine of each ray's elevation (the sky and the far haze)


def _mip_level(ground: np.ndarray) -> np.ndarray:
    """Level whose texel is about one pixel's ground footprint (geometric mean of both axes)."""
    du = np.linalg.norm(np.gradient(ground, axis=1), axis=-1)
    dv = np.linalg.norm(np.gradient(ground, axis=0), axis=-1)
    footprint = np.sqrt(du * dv) / TEXEL_M
    return np.clip(np.floor(np.log2(np.maximum(footprint, 1.0))), 0, MIP_LEVELS - 1).astype(int)


def _background(elevation: np.ndarray, haze: np.ndarray) -> np.ndarray:
    """uint8 RGB: a blue gradient above the horizon, flat haze on the ground beyond range."""
    w = np.clip(elevation / 0.6, 0.0, 1.0)[..., None] ** 0.7
    sky = (1 - w) * np.array(SKY_HORIZON) + w * np.array(SKY_TOP)
    sky[elevation < 0] = haze
    return np.round(sky).astype(np.uint8)


def ground_points(camera: SyntheticCamera) -> tuple[np.ndarray, np.ndarray]:
    """((H, W, 2) the ground point (rig x, y in metres) each pixel sees, (H, W) whether it
    sees the ground within GROUND_RANGE_M), as the renderer draws them."""
    rays = _pixel_rays(camera)
    down = np.minimum(rays[..., 2], -1e-9)
    reach = CAMERA_HEIGHT_M / -down
    ground = np.array([CAMERA_FORWARD_M, 0.0]) + rays[..., :2] * reach[..., None]
    near = (rays[..., 2] < 0) & (reach * np.linalg.norm(rays[..., :2], axis=-1) < GROUND_RANGE_M)
    return ground, near


@lru_cache(maxsize=8)
def _ground_geometry(width: int, height: int) -> _GroundGeometry:
    camera = SyntheticCamera(width, height)
    ground, near = ground_points(camera)
    rays = _pixel_rays(camera)
    pixels = np.flatnonzero(near)
    level = _mip_level(ground).ravel()[pixels]
    scale = (1.0 / (TEXEL_M * 2.0**level)).astype(np.float32)
    g = ground.reshape(-1, 2)[pixels]
    return _GroundGeometry(
        pixels=pixels,
        u=(g[:, 0] * scale).astype(np.float32),
        v=(g[:, 1] * scale).astype(np.float32),
        scale=scale,
        mask=((TEXTURE_SIZE >> level) - 1).astype(np.int32),
        shift=(int(math.log2(TEXTURE_SIZE)) - level).astype(np.int32),
        base=_mip_offsets()[level],
        elevation=rays[..., 2] / np.linalg.norm(rays, axis=-1),
    )


class GroundRenderer:
    """Renders the front camera's view of an endless textured ground plane with a sky."""

    def __init__(self, width: int, height: int, texture: np.ndarray) -> None:
        self.width, self.height = width, height
        self.texture = texture
        self.geometry = _ground_geometry(width, height)
        # Far ground fades to the texture's mean colour, a little washed out towards the sky.
        haze = 0.6 * texture[_mip_offsets()[-1] :].mean(axis=0) + 0.4 * np.array(SKY_HORIZON)
        self.background = _background(self.geometry.elevation, haze)  # where no ground is

    def render(self, x: float, y: float, yaw: float) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame seen from pose (x, y, yaw) in the anchor frame."""
        g = self.geometry
        c, s = math.cos(yaw), math.sin(yaw)
        # Wrap the position into one tile and shift it by four so texel indices stay
        # non-negative: the textured ground lies within GROUND_RANGE_M (+ the camera's offset)
        # of the rig, under 4 tiles.
        ox, oy = x % TILE_M + 4 * TILE_M, y % TILE_M + 4 * TILE_M
        wx = g.u * c - g.v * s + ox * g.scale
        wy = g.u * s + g.v * c + oy * g.scale
        ix = wx.astype(np.int32) & g.mask
        iy = wy.astype(np.int32) & g.mask
        frame = self.background.copy()
        frame.reshape(-1, 3)[g.pixels] = self.texture[(iy << g.shift) + ix + g.base]
        return frame


def encode_mp4(frames: Iterable[np.ndarray], width: int, height: int, fps: int = FPS) -> bytes:
    """H.264 (libx264, yuv420p) mp4 of RGB frames, one per pts tick at `fps`; deterministic."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        # Diamond search, the cheapest subpel pass and no B-frames halve the encode (which
        # dominates generation time) for ~15% more bytes. No B-frames also keeps the output
        # reproducible: with B-frames and MB-tree, x264's asm gave a different stream on a
        # process's first encode of small frames (e.g. 160x96).
        options = {"preset": "veryfast", "crf": "23", "x264-params": "me=dia:subme=1:bframes=0"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1  # multi-threaded x264 output can vary run to run
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


# --------------------------------------------------------------------------- clips and dataset


@dataclass
class SyntheticClip:
    """One generated clip: what goes into the camera and egomotion zips."""

    clip_id: str
    frame_timestamps: np.ndarray
    egomotion: pd.DataFrame
    video: bytes


def _clip_rngs(seed: int, index: int) -> list[np.random.Generator]:
    # spawn_key=(index,) is the index-th child of SeedSequence(seed): clip i is the same
    # whatever the number of clips asked for.
    clip_seed = np.random.SeedSequence(seed, spawn_key=(index,))
    return [np.random.default_rng(s) for s in clip_seed.spawn(4)]


def make_clip(
    seed: int,
    index: int,
    clip_seconds: float = 20,
    width: int = 640,
    height: int = 360,
    profile: MotionProfile | None = None,
) -> SyntheticClip:
    """Clip `index` of the dataset drawn from `seed`: id, frame times, egomotion and mp4 bytes."""
    id_rng, time_rng, motion_rng, texture_rng = _clip_rngs(seed, index)
    clip_id = str(uuid.UUID(bytes=id_rng.bytes(16), version=4))
    frames = camera_timestamps(time_rng, clip_seconds)
    ego_ts = egomotion_timestamps(time_rng, clip_seconds, frames)
    profile = profile or random_profile(motion_rng, float(clip_seconds))
    egomotion = synthesize_egomotion(ego_ts, profile.speed, profile.curvature)
    renderer = GroundRenderer(width, height, ground_texture(texture_rng))
    poses = interpolate_pose(egomotion, frames)
    video = encode_mp4((renderer.render(*pose) for pose in poses), width, height)
    return SyntheticClip(clip_id, frames, egomotion, video)


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_member(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    # A fixed date keeps the zips byte-identical across runs; the payloads are compressed.
    archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def _calibration(clip_ids: list[str], camera: SyntheticCamera) -> dict[str, pd.DataFrame]:
    """The calibration tables as the dataset ships them: camera intrinsics and sensor
    extrinsics indexed by (clip_id, sensor), vehicle dimensions by clip_id."""
    sensors = pd.MultiIndex.from_arrays(
        [clip_ids, [rawdata.DEFAULT_CAMERA] * len(clip_ids)], names=["clip_id", "sensor"]
    )
    intrinsics = pd.DataFrame([camera.intrinsics()] * len(clip_ids), index=sensors)
    intrinsics[["width", "height"]] = intrinsics[["width", "height"]].astype(np.int64)
    return {
        "camera_intrinsics": intrinsics,
        "sensor_extrinsics": pd.DataFrame([camera.extrinsics()] * len(clip_ids), index=sensors),
        "vehicle_dimensions": pd.DataFrame(
            [VEHICLE_DIMENSIONS] * len(clip_ids), index=pd.Index(clip_ids, name="clip_id")
        ),
    }


# No faces or plates in a rendered ground plane: the blur boxes table is empty.
_BLURRED_BOXES = pd.DataFrame(
    {name: pd.Series(dtype=dtype) for name, dtype in _BOX_COLUMNS.items()}
)


@dataclass(frozen=True)
class _Spec:
    seed: int
    clip_seconds: float
    width: int
    height: int
    profile: MotionProfile | None


def _write_chunk(
    dataset: rawdata.RawDataset, chunk: int, indices: range, spec: _Spec, bar: tqdm
) -> list[str]:
    """Write one chunk's camera zip, egomotion zip and calibration; return its clip ids."""
    camera = dataset.camera
    root = dataset.root
    clip_ids: list[str] = []
    camera_path = root / dataset.chunk_file(camera, chunk)
    ego_path = root / dataset.chunk_file(rawdata.EGOMOTION, chunk)
    with _atomic_path(camera_path) as camera_tmp, _atomic_path(ego_path) as ego_tmp:
        with zipfile.ZipFile(camera_tmp, "w") as cams, zipfile.ZipFile(ego_tmp, "w") as egos:
            for index in indices:
                clip = make_clip(
                    spec.seed, index, spec.clip_seconds, spec.width, spec.height, spec.profile
                )
                members = {
                    "video": clip.video,
                    "frame_timestamps": _parquet_bytes(
                        pd.DataFrame({"timestamp": clip.frame_timestamps})
                    ),
                    "blurred_boxes": _parquet_bytes(_BLURRED_BOXES),
                }
                for alias, data in members.items():
                    _write_member(cams, dataset.member(camera, clip.clip_id, alias), data)
                ego_member = dataset.member(rawdata.EGOMOTION, clip.clip_id, rawdata.EGOMOTION)
                _write_member(egos, ego_member, _parquet_bytes(clip.egomotion))
                clip_ids.append(clip.clip_id)
                bar.update()
    for kind, table in _calibration(clip_ids, SyntheticCamera(spec.width, spec.height)).items():
        with _atomic_path(root / dataset.chunk_file(kind, chunk)) as tmp:
            table.to_parquet(tmp)
    return clip_ids


def _check_arguments(
    num_clips: int, clip_seconds: float, width: int, height: int, chunk_size: int
) -> None:
    if num_clips < 1 or chunk_size < 1:
        raise ValueError(f"num_clips ({num_clips}) and chunk_size ({chunk_size}) must be >= 1")
    if round(clip_seconds * FPS) < 2:
        raise ValueError(f"clip_seconds ({clip_seconds}) must give at least 2 frames at {FPS} fps")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width x height ({width}x{height}) must be even and at least 16x16")


@dataclass
class SyntheticDataset:
    """What write_synthetic_dataset wrote: the clip index and every file, under `root`."""

    root: Path
    clip_index: pd.DataFrame
    files: list[Path]


def _official_splits(clip_ids: list[str], val_fraction: float, test_fraction: float, seed: int):
    """The index's `split` column: train / val / test by clip, as the real index names them."""
    from qwenvl.prepare.splits import OFFICIAL_SPLITS, split_clips

    official_name = {ours: official for official, ours in OFFICIAL_SPLITS.items()}
    assignment = split_clips(clip_ids, val_fraction, test_fraction, seed)
    return [official_name[assignment[c]] for c in clip_ids]


def _write_metadata(root: Path, index: pd.DataFrame, features: list[str]) -> list[str]:
    """The presence table (the features written here present) and the data collection table."""
    written_features = (rawdata.DEFAULT_CAMERA, rawdata.EGOMOTION, *rawdata.CALIBRATION_FEATURES)
    presence = pd.DataFrame(
        {feature: feature in written_features for feature in features}, index=index.index
    )
    collection = pd.DataFrame(
        {"country": "synthetic", "hour_of_day": np.int64(12), "platform_class": "synthetic"},
        index=index.index,
    )
    written = [rawdata.FEATURE_PRESENCE[0], rawdata.DATA_COLLECTION]
    for name, table in zip(written, (presence, collection), strict=True):
        with _atomic_path(root / name) as tmp:
            table.to_parquet(tmp)
    return written


def write_synthetic_dataset(
    output_dir: str | Path,
    num_clips: int,
    clip_seconds: float = 20,
    width: int = 640,
    height: int = 360,
    seed: int = 0,
    chunk_size: int = 4,
    profile: MotionProfile | None = None,
    progress: bool = True,
    val_fraction: float = 0.125,
    test_fraction: float = 0.25,
) -> SyntheticDataset:
    """Write `num_clips` synthetic clips in the dataset's layout (see prepare/rawdata.py).

    The index carries an official-style `split` by clip (fractions and seed as given) and
    `clip_is_valid` True. `profile` drives every clip with one fixed motion; by default each
    clip draws its own random profile. The same arguments give identical labels and frames.
    """
    _check_arguments(num_clips, clip_seconds, width, height, chunk_size)
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    features = rawdata.default_features((rawdata.DEFAULT_CAMERA,))
    rawdata.write_features_csv(features, root / rawdata.FEATURES_CSV)
    dataset = rawdata.RawDataset(root)  # names every file from the features.csv just written
    spec = _Spec(seed, clip_seconds, width, height, profile)
    clip_ids: list[str] = []
    chunks: list[int] = []
    with tqdm(total=num_clips, desc="synthetic clips", unit="clip", disable=not progress) as bar:
        for chunk, start in enumerate(range(0, num_clips, chunk_size)):
            indices = range(start, min(start + chunk_size, num_clips))
            ids = _write_chunk(dataset, chunk, indices, spec, bar)
            clip_ids += ids
            chunks += [chunk] * len(ids)
    index = pd.DataFrame(
        {
            "chunk": np.array(chunks, dtype=np.int64),
            "split": _official_splits(clip_ids, val_fraction, test_fraction, seed),
            "clip_is_valid": np.ones(len(clip_ids), dtype=bool),
        },
        index=pd.Index(clip_ids, name="clip_id"),
    )
    files = [rawdata.FEATURES_CSV, *_write_metadata(root, index, list(features.index))]
    with _atomic_path(root / rawdata.CLIP_INDEX) as tmp:
        index.to_parquet(tmp)
    files.append(rawdata.CLIP_INDEX)
    for chunk in sorted(set(chunks)):
        files += [
            dataset.chunk_file(feature, chunk)
            for feature in (
                rawdata.DEFAULT_CAMERA,
                rawdata.EGOMOTION,
                *rawdata.CALIBRATION_FEATURES,
            )
        ]
    return SyntheticDataset(root, index, [root / f for f in files])
