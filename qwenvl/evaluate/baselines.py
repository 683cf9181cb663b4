"""The baselines every model is compared with, one registry: what the next second is without a
model. A model is only useful where it beats the strongest of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qwenvl.task import STEP_SECONDS

FIT_FRAMES = 15  # the last half second of the observed 30 frames


@dataclass(frozen=True)
class Baseline:
    name: str
    description: str
    predict: Callable[[np.ndarray, np.ndarray | None], np.ndarray | None]
    """(observed (N, 30, 2), the train set's mean next second (30, 2) or None) -> (N, 30, 2)
    predictions, or None where it cannot predict (train_mean without a train set)."""


def train_mean(observed: np.ndarray, train_future: np.ndarray | None) -> np.ndarray | None:
    if train_future is None or not len(train_future):
        return None
    mean = np.asarray(train_future, dtype=np.float64).mean(axis=0)
    return np.broadcast_to(mean, observed.shape).copy()


def hold_last(observed: np.ndarray, _=None) -> np.ndarray:
    return np.repeat(observed[:, -1:, :], observed.shape[1], axis=1)


def constant_speed_straight(observed: np.ndarray, _=None) -> np.ndarray:
    held = hold_last(observed)
    held[..., 1] = 0.0
    return held


def accel_and_curvature_rate(observed: np.ndarray, _=None) -> np.ndarray:
    """(N, 30, 2): the last half second's trend carried on. A least-squares line through the
    last FIT_FRAMES observed speeds, and one through their curvatures (constant acceleration,
    constant curvature rate), extrapolated over the next 30 frames; the speed stops at zero
    rather than change sign (a car braking to a stop does not then reverse)."""
    observed = np.asarray(observed, dtype=np.float64)
    recent = observed[:, -FIT_FRAMES:, :]
    t = np.arange(1 - FIT_FRAMES, 1) * STEP_SECONDS  # the last observed frame at 0
    centred = t - t.mean()
    slope = np.einsum("t,ntc->nc", centred, recent - recent.mean(axis=1, keepdims=True))
    slope /= (centred**2).sum()
    now = recent.mean(axis=1) - slope * t.mean()
    ahead = np.arange(1, observed.shape[1] + 1) * STEP_SECONDS
    predicted = now[:, None, :] + slope[:, None, :] * ahead[None, :, None]
    speed = predicted[..., 0]
    reversing = observed[:, -1:, 0] < 0
    predicted[..., 0] = np.where(reversing, np.minimum(speed, 0.0), np.maximum(speed, 0.0))
    return predicted


BASELINES: tuple[Baseline, ...] = (
    Baseline("train_mean", "the mean next second of the training set, the same for every clip",
             train_mean),
    Baseline("hold_last", "the last observed (speed, curvature) held", hold_last),
    Baseline("constant_speed_straight", "the last observed speed with zero curvature",
             constant_speed_straight),
    Baseline("accel_and_curvature_rate", "the last half second's acceleration and curvature "
             "rate carried on (a least-squares line through each)", accel_and_curvature_rate),
)  # fmt: skip


def baseline_predictions(
    observed: np.ndarray, train_future: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Every baseline's predictions from the observed second (N, 30, 2), those that can."""
    observed = np.asarray(observed, dtype=np.float64)
    predictions = {b.name: b.predict(observed, train_future) for b in BASELINES}
    return {name: pred for name, pred in predictions.items() if pred is not None}


def strongest(baselines: dict[str, dict], bucket: str = "all") -> tuple[str, float] | None:
    """(name, ADE in metres) of the baseline with the lowest ADE in a bucket of metrics.json."""
    ades = {
        name: result[bucket]["ade_m"]
        for name, result in baselines.items()
        if result.get(bucket, {}).get("ade_m") is not None
    }
    if not ades:
        return None
    name = min(ades, key=ades.get)
    return name, ades[name]
