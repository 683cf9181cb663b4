"""PNG plots of an evaluation: trajectories, speed and curvature over time, error histogram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qwenvl.task import HORIZON_PAIRS, STEP_SECONDS  # noqa: E402
from qwenvl.trajectory import integrate_unicycle  # noqa: E402

STEP_TIMES = np.arange(1, HORIZON_PAIRS + 1) * STEP_SECONDS


def plot_trajectories(pred: np.ndarray, true: np.ndarray, ids: list[str], path: Path) -> None:
    """Bird's-eye view (x forward, y left, metres) of predicted and true next-second paths."""
    n = len(pred)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, p, t, name in zip(axes[0], pred, true, ids, strict=True):
        for pairs, label, style in ((t, "true", "k-"), (p, "predicted", "r--")):
            xy = integrate_unicycle(pairs[:, 0], pairs[:, 1])
            ax.plot(-xy[:, 1], xy[:, 0], style, label=label)  # left is drawn to the left
        ax.plot(0, 0, "bo", markersize=4)
        ax.set_title(name[-12:], fontsize=8)
        ax.set_xlabel("left <- y (m) -> right")
        ax.set_ylabel("x forward (m)")
        ax.axis("equal")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_profiles(pred: np.ndarray, true: np.ndarray, ids: list[str], path: Path) -> None:
    """Speed (m/s) and curvature (1/m) over the 30 future steps, predicted against true."""
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    colours = plt.cm.tab10(np.linspace(0, 1, max(len(pred), 1)))
    for p, t, name, colour in zip(pred, true, ids, colours, strict=False):
        for row, (ax, unit) in enumerate(
            zip(axes, ("speed (m/s)", "curvature (1/m)"), strict=True)
        ):
            ax.plot(STEP_TIMES, t[:, row], "-", color=colour, label=f"{name[-12:]} true")
            ax.plot(STEP_TIMES, p[:, row], "--", color=colour)
            ax.set_ylabel(unit)
    axes[1].set_xlabel("seconds ahead (solid: true, dashed: predicted)")
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_error_histogram(ade_by_name: dict[str, np.ndarray], path: Path) -> None:
    """Distribution of per-clip ADE (m) for the model and each baseline."""
    fig, ax = plt.subplots(figsize=(7, 4))
    values = [v for v in ade_by_name.values() if len(v)]
    upper = max((float(np.percentile(v, 99)) for v in values), default=1.0) or 1.0
    bins = np.linspace(0, upper, 30)
    for name, ade in ade_by_name.items():
        if len(ade):
            ax.hist(
                np.clip(ade, 0, upper), bins=bins, histtype="step", label=f"{name} (n={len(ade)})"
            )
    ax.set_xlabel("ADE over the next second (m)")
    ax.set_ylabel("segments")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
