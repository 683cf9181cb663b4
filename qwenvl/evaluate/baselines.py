"""The baselines every model is compared with: what the next second is without a model."""

from __future__ import annotations

import numpy as np


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
