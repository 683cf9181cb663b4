"""Ego-motion maths: quaternions, body-frame speed, interpolation at frame times, unicycle model."""

from __future__ import annotations

import numpy as np
import pandas as pd

EGOMOTION_COLUMNS: dict[str, str] = {
    "timestamp": "int64",
    "qx": "float64",
    "qy": "float64",
    "qz": "float64",
    "qw": "float64",
    "x": "float64",
    "y": "float64",
    "z": "float64",
    "vx": "float64",
    "vy": "float64",
    "vz": "float64",
    "ax": "float64",
    "ay": "float64",
    "az": "float64",
    "curvature": "float64",
}


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


def integrate_unicycle(
    speed: np.ndarray, curvature: np.ndarray, dt: float = 1.0 / 30.0
) -> np.ndarray:
    """(N, 2) positions (x forward, y left, metres) at the N future steps of a unicycle.

    Starts at the origin with heading 0. The trapezoid rule integrates yaw rate = v * curvature
    and the velocity; the state before the first step takes the first pair's values, so N pairs
    at dt cover N * dt seconds (30 pairs at 1/30 s = 1 s).
    """
    v = np.asarray(speed, dtype=np.float64)
    k = np.asarray(curvature, dtype=np.float64)
    v = np.concatenate([v[:1], v])
    yaw_rate = v * np.concatenate([k[:1], k])
    heading = np.concatenate([[0.0], np.cumsum(0.5 * dt * (yaw_rate[1:] + yaw_rate[:-1]))])
    vx = v * np.cos(heading)
    vy = v * np.sin(heading)
    x = np.cumsum(0.5 * dt * (vx[1:] + vx[:-1]))
    y = np.cumsum(0.5 * dt * (vy[1:] + vy[:-1]))
    return np.stack([x, y], axis=-1)


def displacement_errors(pred_xy: np.ndarray, true_xy: np.ndarray) -> tuple[float, float]:
    """(ADE, FDE) in metres between two (N, 2) trajectories."""
    distances = np.linalg.norm(np.asarray(pred_xy) - np.asarray(true_xy), axis=-1)
    return float(distances.mean()), float(distances[-1])
