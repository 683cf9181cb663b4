"""The path a (speed, curvature) sequence drives: the unicycle model, and how far two paths are
apart. Predictions and ground truth are integrated the same way, so errors are in metres."""

from __future__ import annotations

import numpy as np

from qwenvl.task import STEP_SECONDS


def integrate_unicycle(
    speed: np.ndarray, curvature: np.ndarray, dt: float = STEP_SECONDS
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
