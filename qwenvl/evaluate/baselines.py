"""The baselines every model is compared with: what the next second is without a model. A model
is only useful where it beats the strongest of them."""

from __future__ import annotations

import numpy as np

FRAME_SECONDS = 1.0 / 30.0
FIT_FRAMES = 15  # the last half second of the observed 30 frames


def accel_and_curvature_rate(observed: np.ndarray) -> np.ndarray:
    """(N, 30, 2): the last half second's trend carried on. A least-squares line through the
    last FIT_FRAMES observed speeds, and one through their curvatures (constant acceleration,
    constant curvature rate), extrapolated over the next 30 frames; the speed stops at zero
    rather than change sign (a car braking to a stop does not then reverse)."""
    observed = np.asarray(observed, dtype=np.float64)
    recent = observed[:, -FIT_FRAMES:, :]
    t = np.arange(1 - FIT_FRAMES, 1) * FRAME_SECONDS  # the last observed frame at 0
    centred = t - t.mean()
    slope = np.einsum("t,ntc->nc", centred, recent - recent.mean(axis=1, keepdims=True))
    slope /= (centred**2).sum()
    now = recent.mean(axis=1) - slope * t.mean()
    ahead = np.arange(1, observed.shape[1] + 1) * FRAME_SECONDS
    predicted = now[:, None, :] + slope[:, None, :] * ahead[None, :, None]
    speed = predicted[..., 0]
    reversing = observed[:, -1:, 0] < 0
    predicted[..., 0] = np.where(reversing, np.minimum(speed, 0.0), np.maximum(speed, 0.0))
    return predicted


def baseline_predictions(
    observed: np.ndarray, train_future: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Predictions of the baselines from the observed second (N, 30, 2).

    train_mean: the mean next-second profile of the training set, the same for every clip;
    hold_last: the last observed (speed, curvature) held for 30 steps;
    constant_speed_straight: the last observed speed with zero curvature;
    accel_and_curvature_rate: the last half second's acceleration and curvature rate held.
    """
    last = observed[:, -1:, :]
    baselines = {
        "hold_last": np.repeat(last, observed.shape[1], axis=1),
        "constant_speed_straight": np.concatenate(
            [np.repeat(last[..., :1], observed.shape[1], axis=1), np.zeros_like(observed[..., 1:])],
            axis=-1,
        ),
        "accel_and_curvature_rate": accel_and_curvature_rate(observed),
    }
    if train_future is not None and len(train_future):
        mean = np.asarray(train_future, dtype=np.float64).mean(axis=0)
        baselines = {"train_mean": np.broadcast_to(mean, observed.shape).copy(), **baselines}
    return baselines


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
