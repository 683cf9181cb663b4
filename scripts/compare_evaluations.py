#!/usr/bin/env python
"""Compare evaluations of several models on the same test set: one table with every model and
the baselines, a sentence on where each model stands, and comparison.md with their plots and the
first evaluation's gallery clips drawn for every model side by side (in <output>_gallery/).

Example: compare_evaluations.py zero-shot=eval/base fine-tuned=eval/lora --output eval/comparison.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from qwenvl.cli import UserError, run_script
from qwenvl.evaluate.gallery import side_by_side
from qwenvl.evaluate.report import comparison_table, standing, steps
from qwenvl.files import atomic_write_text, check_apart, writable_parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "evaluations",
        nargs="+",
        metavar="NAME=DIR",
        help="a name for the table and an output folder of evaluate.py",
    )
    parser.add_argument("--output", help="also write this Markdown file (table, verdicts, plots)")
    parser.add_argument(
        "--overwrite-output",
        action="store_true",
        help="replace an existing --output (and its side-by-side gallery)",
    )
    return parser.parse_args(argv)


def read_metrics(path: Path) -> dict:
    """An evaluation's metrics.json; UserError naming the file when it is not one."""
    try:
        metrics = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); evaluate that model again") from None
    missing = [k for k in ("parse", "model", "baselines") if not isinstance(metrics.get(k), dict)]
    if not isinstance(metrics, dict) or missing:
        raise UserError(f"{path}: not an evaluation's metrics (no {', '.join(missing)})")
    return metrics


def load(specs: list[str]) -> dict[str, tuple[Path, dict]]:
    loaded = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"{spec}: expected NAME=DIR")
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise UserError(f"{path}: not found (run evaluate.py first)")
        loaded[name] = (Path(folder), read_metrics(path))
    sets = {name: m.get("test_set") for name, (_, m) in loaded.items()}
    if None not in sets.values() and len({s["ids_sha256"] for s in sets.values()}) > 1:
        described = ", ".join(
            f"{name}: {s['samples']} samples of {s['path']}" for name, s in sets.items()
        )
        raise UserError(
            f"evaluations of different test sets ({described}); evaluate every model on the "
            "same test.json (and --max-samples)"
        )
    totals = {m["parse"]["total"] for _, m in loaded.values()}
    if len(totals) > 1:
        raise UserError(f"evaluations on different numbers of samples: {sorted(totals)}")
    return loaded


def gallery_lines(loaded: dict[str, tuple[Path, dict]], output: Path) -> list[str]:
    """The first evaluation's gallery clips for every model side by side, drawn beside
    `output`; none where an evaluation lacks its gallery or predictions."""
    evaluations = {}
    for name, (folder, _) in loaded.items():
        summary, predictions = folder / "gallery.json", folder / "predictions.jsonl"
        if not (summary.is_file() and predictions.is_file()):
            return []
        records = [json.loads(line) for line in predictions.read_text().splitlines() if line]
        evaluations[name] = (json.loads(summary.read_text()), records)
    return side_by_side(evaluations, output.parent, f"{output.stem}_gallery")


def check_output_file(output: Path, overwrite: bool) -> None:
    """--output must be a file path, replaced only with --overwrite-output."""
    if output.is_dir():
        raise UserError(f"--output {output}: is a folder; name the Markdown file to write")
    gallery = output.parent / f"{output.stem}_gallery"
    if (output.exists() or gallery.exists()) and not overwrite:
        raise UserError(
            f"--output {output}: already exists (pass --overwrite-output to replace it and "
            f"{gallery.name}/)"
        )
    writable_parent(output)


def run(args: argparse.Namespace) -> int:
    loaded = load(args.evaluations)
    if args.output:
        check_apart(args.output, {f"{name}=": folder for name, (folder, _) in loaded.items()})
        check_output_file(Path(args.output), args.overwrite_output)
    metrics = {name: m for name, (_, m) in loaded.items()}
    table = comparison_table(metrics)
    verdicts = [standing(metrics, name) for name in metrics] + steps(metrics)
    print(table)
    print()
    print("\n".join(verdicts))
    if args.output:
        output = Path(args.output)
        parts = ["# Comparison\n", table, "", *verdicts, ""]
        for name, (folder, _) in loaded.items():
            parts.append(f"## {name}\n")
            for plot in ("trajectories.png", "profiles.png"):
                if (folder / plot).is_file():
                    link = os.path.relpath(folder / plot, output.parent.resolve())
                    parts.append(f"![{name} {plot[:-4]}]({link})")
            parts.append("")
        output.parent.mkdir(parents=True, exist_ok=True)
        parts += gallery_lines(loaded, output)
        atomic_write_text(output, "\n".join(parts))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
