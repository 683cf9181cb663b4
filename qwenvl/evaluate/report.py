"""Score prediction records against the baselines (metrics.json), and write the report: tables
per bucket, where each model stands, and the plots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from qwenvl.evaluate.baselines import baseline_predictions, strongest
from qwenvl.evaluate.gallery import gallery_markdown, write_gallery
from qwenvl.evaluate.plots import plot_error_histogram, plot_profiles, plot_trajectories
from qwenvl.metrics import COUNT_TITLE, METRICS, bucketed_metrics, displacements
from qwenvl.task import HORIZON_PAIRS

# The tables' columns: the count, then every metric of the registry.
COLUMNS = [("n", COUNT_TITLE, "{:d}"), *((m.key, m.title, m.fmt) for m in METRICS)]


def score(records: list[dict], train_future: np.ndarray | None) -> dict:
    """metrics.json content: parse counts, model metrics on parsed samples, baselines on all."""
    parsed = [r for r in records if r["pairs"] is not None]
    true_all = np.array([r["true_pairs"] for r in records])
    observed = np.array([r["observed_pairs"] for r in records])
    baselines = baseline_predictions(observed, train_future)
    return {
        "parse": {
            "total": len(records),
            "parsed": len(parsed),
            "rate": len(parsed) / len(records) if records else 0.0,
            "failures": dict(Counter(r["parse_error"] for r in records if r["pairs"] is None)),
        },
        "model": bucketed_metrics(
            np.array([r["pairs"] for r in parsed]).reshape(-1, HORIZON_PAIRS, 2),
            np.array([r["true_pairs"] for r in parsed]).reshape(-1, HORIZON_PAIRS, 2),
        ),
        "baselines": {name: bucketed_metrics(pred, true_all) for name, pred in baselines.items()},
    }


def _row(name: str, metrics: dict) -> str:
    cells = [fmt.format(metrics[key]) if key in metrics else "-" for key, _, fmt in COLUMNS]
    return f"| {name} | " + " | ".join(cells) + " |"


def metrics_table(metrics: dict, bucket: str = "all", model_name: str = "model") -> str:
    """Markdown table: the model (parsed samples only) and the baselines, one bucket."""
    return comparison_table({model_name: metrics}, bucket)


def comparison_table(evaluations: dict[str, dict], bucket: str = "all") -> str:
    """Markdown table: one row per evaluated model (same test set), then the baselines."""
    header = "| | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, metrics in evaluations.items():
        lines.append(_row(name, metrics["model"].get(bucket, {})))
    baselines = next(iter(evaluations.values()))["baselines"]
    for name, result in baselines.items():
        lines.append(_row(name, result.get(bucket, {})))
    return "\n".join(lines)


def standing(evaluations: dict[str, dict], model_name: str) -> str:
    """One plain sentence: where `model_name` stands on ADE against the other models and the
    baselines (lower is better)."""
    ade = {name: m["model"].get("all", {}).get("ade_m") for name, m in evaluations.items()}
    baselines = next(iter(evaluations.values()))["baselines"]
    ade.update({name: result["all"]["ade_m"] for name, result in baselines.items()})
    own = ade.pop(model_name)
    if own is None:
        return f"{model_name}: no parsed answer, so no ADE to compare."
    beats = [f"{n} ({v:.2f} m)" for n, v in ade.items() if v is not None and own < v]
    behind = [f"{n} ({v:.2f} m)" for n, v in ade.items() if v is not None and own >= v]
    parts = [f"{model_name} ADE at 1 s is {own:.2f} m"]
    if beats:
        parts.append(f"better than {', '.join(beats)}")
    if behind:
        parts.append(f"not yet better than {', '.join(behind)}")
    return "; ".join(parts) + "."


def steps(evaluations: dict[str, dict]) -> list[str]:
    """What each model adds to the one before it, in the order given (zero-shot, then a
    fine-tune, then one with more input, say), and where the strongest baseline stands: the
    plain lines an ablation ends with."""
    lines = []
    ades = [(n, m["model"].get("all", {}).get("ade_m")) for n, m in evaluations.items()]
    for (before, old), (after, new) in zip(ades, ades[1:], strict=False):
        if old is not None and new is not None:
            change = "better" if new < old else "worse"
            lines.append(
                f"From {before} to {after}: ADE {old:.2f} m -> {new:.2f} m "
                f"({abs(old - new):.2f} m {change})."
            )
    best = strongest(next(iter(evaluations.values()))["baselines"])
    if best is not None:
        ahead = [n for n, ade in ades if ade is not None and ade < best[1]]
        lines.append(
            f"The strongest baseline is {best[0]} ({best[1]:.2f} m); "
            + (f"ahead of it: {', '.join(ahead)}." if ahead else "no model is ahead of it yet.")
        )
    return lines


def strongest_line(metrics: dict, bucket: str = "all") -> str:
    """Which baseline is strongest in a bucket, and whether the model beats it there: a model
    is only useful where it does."""
    best = strongest(metrics["baselines"], bucket)
    if best is None:
        return ""
    name, ade = best
    own = metrics["model"].get(bucket, {}).get("ade_m")
    verdict = (
        "no parsed answer to compare"
        if own is None
        else f"the model ({own:.2f} m) is {'ahead of' if own < ade else 'behind'} it here"
    )
    return f"\nStrongest baseline: {name} (ADE {ade:.2f} m); {verdict}."


def write_report(
    metrics: dict,
    records: list[dict],
    model_path: str,
    output_dir: Path,
    gallery_buckets: bool = False,
) -> dict:
    """report.md with its plots and gallery in output_dir; the gallery's summary."""
    parse = metrics["parse"]
    failures = ", ".join(f"{k}: {v}" for k, v in parse["failures"].items()) or "none"
    buckets = [b for b in metrics["baselines"]["hold_last"] if b != "all"]
    parts = [
        f"# Evaluation of `{model_path}`\n",
        f"Parsed {parse['parsed']} of {parse['total']} answers ({100 * parse['rate']:.1f}%); "
        f"failures: {failures}. Decoding: {metrics.get('decoding', 'free')} "
        "(constrained: every answer follows the answer grammar). The model's metrics count "
        "parsed answers only; the baselines use every sample. ADE/FDE integrate (speed, "
        "curvature) with the unicycle model over 1 s.\n",
        metrics_table(metrics),
        strongest_line(metrics),
    ]
    unscored = metrics.get("unscored", {}).get("count", 0)
    if unscored:
        parts.insert(
            2,
            f"{unscored} test samples could not be answered (video missing or unreadable, or "
            "labels absent) and are not scored; metrics.json names each with why.\n",
        )
    for bucket in buckets:
        parts += [
            f"\n## {bucket}\n",
            metrics_table(metrics, bucket),
            strongest_line(metrics, bucket),
        ]
    write_plots(records, output_dir)
    images = [f"![{p.stem}]({p.name})" for p in sorted(output_dir.glob("*.png"))]
    parts += ["\n## Plots\n", *images]
    gallery = write_gallery(records, output_dir, gallery_buckets)
    parts += gallery_markdown(gallery)
    (output_dir / "report.md").write_text("\n".join(parts) + "\n")
    return gallery


def write_plots(records: list[dict], output_dir: Path, count: int = 4) -> None:
    parsed = [r for r in records if r["pairs"] is not None]
    if parsed:  # with no parsed answer there is no predicted path to draw
        shown = parsed[:count]
        pred = np.array([r["pairs"] for r in shown])
        true = np.array([r["true_pairs"] for r in shown])
        ids = [r["id"] for r in shown]
        plot_trajectories(pred, true, ids, output_dir / "trajectories.png")
        plot_profiles(pred, true, ids, output_dir / "profiles.png")
    ade = {"model": _ades([r["pairs"] for r in parsed], [r["true_pairs"] for r in parsed])}
    observed = np.array([r["observed_pairs"] for r in records])
    truth = np.array([r["true_pairs"] for r in records])
    for name, pred_all in baseline_predictions(observed, None).items():
        ade[name] = _ades(pred_all, truth)
    plot_error_histogram(ade, output_dir / "ade_histogram.png")


def _ades(pred, true) -> np.ndarray:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, HORIZON_PAIRS, 2)
    return displacements(pred, np.asarray(true, dtype=np.float64).reshape(pred.shape))[:, 0]
