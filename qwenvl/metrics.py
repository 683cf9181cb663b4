"""Evaluation metrics in physical units, per bucket, and the baselines they are compared with."""

from __future__ import annotations

import numpy as np

from qwenvl.egomotion import displacement_errors, integrate_unicycle

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


def baseline_predictions(
    observed: np.ndarray, train_future: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Predictions of the baselines from the observed second (N, 30, 2).

    train_mean: the mean next-second profile of the training set, the same for every clip;
    hold_last: the last observed (speed, curvature) held for 30 steps;
    constant_speed_straight: the last observed speed with zero curvature.
    """
    last = observed[:, -1:, :]
    baselines = {
        "hold_last": np.repeat(last, observed.shape[1], axis=1),
        "constant_speed_straight": np.concatenate(
            [np.repeat(last[..., :1], observed.shape[1], axis=1), np.zeros_like(observed[..., 1:])],
            axis=-1,
        ),
    }
    if train_future is not None and len(train_future):
        mean = np.asarray(train_future, dtype=np.float64).mean(axis=0)
        baselines = {"train_mean": np.broadcast_to(mean, observed.shape).copy(), **baselines}
    return baselines
