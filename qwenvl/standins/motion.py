"""Smooth random (speed, curvature) driving and the egomotion a real clip would log for it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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
