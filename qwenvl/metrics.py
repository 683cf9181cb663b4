"""The task's metrics, one registry: each metric's name, table title, unit, format and how it is
computed, in physical units (m/s, 1/m, metres), overall and per bucket of the true motion
(stopped / slow / fast, straight / left / right). The evaluation report, the comparison of
evaluations and the task metrics while training all read it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from qwenvl import record
from qwenvl.chat import user_text_of
from qwenvl.task import HORIZON_PAIRS
from qwenvl.trajectory import displacement_errors, integrate_unicycle

STOPPED_BELOW_MPS = 0.5
FAST_FROM_MPS = 10.0
STRAIGHT_BELOW_PER_M = 0.005  # |curvature| under this: radius over 200 m


@dataclass(frozen=True)
class Metric:
    key: str
    """Its key in metrics.json."""
    title: str
    """Its column in the tables."""
    unit: str
    fmt: str
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    """(prediction - truth (N, 30, 2), per-sample (ADE, FDE) (N, 2)) -> the value."""
    logged: str | None = None
    """Its name while training (eval_<logged>), for the task metrics; None: not logged."""


def _mae(column: int):
    return lambda diff, _: float(np.abs(diff[..., column]).mean())


def _rmse(column: int):
    return lambda diff, _: float(np.sqrt((diff[..., column] ** 2).mean()))


METRICS: tuple[Metric, ...] = (
    Metric("speed_mae", "speed MAE (m/s)", "m/s", "{:.3f}", _mae(0), "speed_mae"),
    Metric("speed_rmse", "speed RMSE (m/s)", "m/s", "{:.3f}", _rmse(0)),
    Metric("curvature_mae", "curv. MAE (1/m)", "1/m", "{:.4f}", _mae(1), "curvature_mae"),
    Metric("curvature_rmse", "curv. RMSE (1/m)", "1/m", "{:.4f}", _rmse(1)),
    Metric("ade_m", "ADE 1 s (m)", "m", "{:.3f}", lambda _, d: float(d[:, 0].mean()), "ade"),
    Metric("fde_m", "FDE 1 s (m)", "m", "{:.3f}", lambda _, d: float(d[:, 1].mean()), "fde"),
)
COUNT_TITLE = "n"  # the samples a row counts, the first column of every table


def displacements(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N, 2) ADE and FDE in metres of each sample, both paths integrated the same way."""
    return np.array(
        [
            displacement_errors(integrate_unicycle(*p.T), integrate_unicycle(*t.T))
            for p, t in zip(pred, true, strict=True)
        ]
    ).reshape(-1, 2)


def error_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Every metric of METRICS over (N, 30, 2) predictions and truths, with n."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if len(pred) == 0:
        return {"n": 0}
    diff, moved = pred - true, displacements(pred, true)
    return {"n": len(pred), **{m.key: m.compute(diff, moved) for m in METRICS}}


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


def logged_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """The metrics logged while training, as eval_<name> (empty without samples)."""
    scores = error_metrics(pred, true)
    if not scores["n"]:
        return {}
    return {f"eval_{m.logged}": scores[m.key] for m in METRICS if m.logged}


def scoring_problem(sample: Mapping) -> str | None:
    """Why a sample cannot be scored from its own fields (its labels, its prompt), or None."""
    missing = [f.name for f in record.LABELS if len(sample.get(f.name) or ()) != HORIZON_PAIRS]
    if missing:
        return f"no {HORIZON_PAIRS} values of {', '.join(missing)}"
    try:
        user_text_of(sample)
    except (KeyError, IndexError, TypeError, AttributeError):
        return "no human/gpt conversation"
    return None
