#!/usr/bin/env python
"""Evaluate a model on test.json against the baselines: parse rate, speed and curvature errors,
ADE/FDE in metres, per bucket. Works with a base model, a LoRA adapter, a merged model or a full
fine-tune checkpoint; writes predictions.jsonl, metrics.json, report.md and PNG plots. Runs on
the GPU when there is one (--device to choose).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qwenvl.cli import (
    UserError,
    add_inference_arguments,
    atomic_output_dir,
    check_output_dir,
    cli_main,
    load_inference_model,
)
from qwenvl.data import load_samples
from qwenvl.evaluation import (
    metrics_table,
    pairs_of,
    prediction_record,
    score,
    write_predictions,
    write_report,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-path",
        required=True,
        help="base model, LoRA adapter, merged or full checkpoint (path or hub id)",
    )
    add_inference_arguments(parser)
    parser.add_argument("--test-json", required=True, help="test.json in the training format")
    parser.add_argument(
        "--train-json",
        help="train.json for the train-set mean baseline (default: train.json beside --test-json)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="clips per generation batch (default: %(default)s)",
    )
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N samples")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="generation budget (default: fitted to the widest answer of the model's format)",
    )
    parser.add_argument(
        "--no-constrained",
        dest="constrained",
        action="store_false",
        help="free decoding: measure raw format-following (unparsed answers are counted) "
        "instead of constraining every answer to the answer grammar",
    )
    parser.add_argument(
        "--output-dir", required=True, help="where predictions, metrics, report and plots go"
    )
    parser.add_argument(
        "--overwrite-output", action="store_true", help="replace an existing output directory"
    )
    args = parser.parse_args(argv)
    if any(
        n is not None and n < 1 for n in (args.batch_size, args.max_samples, args.max_new_tokens)
    ):
        parser.error("--batch-size, --max-samples and --max-new-tokens must be positive")
    return args


def read_samples(path: Path, limit: int | None = None) -> list[dict]:
    """Samples of a training-format JSON file, video paths resolved from its folder."""
    try:
        return load_samples([str(path)])[:limit]
    except ValueError as err:  # missing file or invalid JSON
        raise UserError(str(err).splitlines()[0]) from None


def train_future(args: argparse.Namespace) -> np.ndarray | None:
    path = Path(args.train_json) if args.train_json else Path(args.test_json).parent / "train.json"
    if not path.is_file():
        print(f"note: {path} not found; the train-set mean baseline is left out", file=sys.stderr)
        return None
    return np.array([pairs_of(s, "future") for s in read_samples(path)])


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output_dir, args.overwrite_output)
    samples = read_samples(Path(args.test_json), args.max_samples)
    if not samples:
        raise UserError(f"{args.test_json}: no samples")
    from qwenvl.inference import generate_answers
    from qwenvl.video import decode_video

    loaded = load_inference_model(args, args.model_path, data_dir=Path(args.test_json).parent)
    print(f"{args.model_path}: {loaded.describe()}")
    records = []
    with tqdm(total=len(samples), desc="generating", unit="clip") as bar:
        for start in range(0, len(samples), args.batch_size):
            batch = samples[start : start + args.batch_size]
            clips = [decode_video(s["video"], loaded.settings) for s in batch]
            clips = [
                (frames, float(s.get("fps") or fps))
                for s, (frames, fps) in zip(batch, clips, strict=True)
            ]
            texts = generate_answers(
                loaded, clips, max_new_tokens=args.max_new_tokens, constrained=args.constrained
            )
            records += [prediction_record(s, t) for s, t in zip(batch, texts, strict=True)]
            bar.update(len(batch))
    metrics = score(records, train_future(args))
    metrics["model_path"] = args.model_path
    metrics["decoding"] = "constrained" if args.constrained else "free"
    with atomic_output_dir(args.output_dir, args.overwrite_output) as tmp:
        write_predictions(records, tmp / "predictions.jsonl")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_report(metrics, records, args.model_path, tmp)
    print(metrics_table(metrics))
    print(
        f"parsed {metrics['parse']['parsed']}/{metrics['parse']['total']}; report: "
        f"{Path(args.output_dir) / 'report.md'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
