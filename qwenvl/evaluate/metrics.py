"""Evaluation metrics in physical units (m/s, 1/m, metres), overall and per bucket of the true
motion (stopped / slow / fast, straight / left / right)."""

from __future__ import annotations

import numpy as np

from qwenvl.evaluate.trajectory import displacement_errors, integrate_unicycle

STOPPED_BELOW_MPS = 0.5
FAST_FROM_MPS = 10.0
STRAIGHT_BELOW_PER_M = 0.005  # |curvature| under this: radius over 200 m


def speed_bucket(true_pairs: np.ndarray) -> str:
    """stopped / slow / fast by the true mean |forward speed| over the next second."""
    speed = float(np.abs(true_pairs[:, 0]).mean())
    return "stopped" if speed < STOPPED_BELOW_MPS else "slow" if speed < FAST_FROM_MPS else "fast"


def turn_bucket(true_pairs: np.ndarray) -> str:
    """straight / left / right by the true mean signed curvature (positive = left)."""
    curvature = float(true_pairs[:, 1].mean())
    if abs(curvature) < STRAIGHT_BELOW_PER_M:
        return "straight"
    return "left" if curvature > 0 else "right"


def error_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Speed and curvature MAE/RMSE over every step, ADE/FDE at 1 s in metres; (N, 30, 2) each."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if len(pred) == 0:
        return {"n": 0}
    diff = pred - true
    displacement = np.array(
        [
            displacement_errors(integrate_unicycle(*p.T), integrate_unicycle(*t.T))
            for p, t in zip(pred, true, strict=True)
        ]
    )
    return {
        "n": len(pred),
        "speed_mae": float(np.abs(diff[..., 0]).mean()),
        "speed_rmse": float(np.sqrt((diff[..., 0] ** 2).mean())),
        "curvature_mae": float(np.abs(diff[..., 1]).mean()),
        "curvature_rmse": float(np.sqrt((diff[..., 1] ** 2).mean())),
        "ade_m": float(displacement[:, 0].mean()),
        "fde_m": float(displacement[:, 1].mean()),
    }


def bucketed_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, dict]:
    """error_metrics overall and for each speed and turn bucket of the ground truth."""
    pred, true = np.asarray(pred), np.asarray(true)
    result = {"all": error_metrics(pred, true)}
    for bucket_of in (speed_bucket, turn_bucket):
        names = np.array([bucket_of(t) for t in true])
        for name in sorted(set(names)):
            keep = names == name
            result[name] = error_metrics(pred[keep], true[keep])
    return result
