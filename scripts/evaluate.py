#!/usr/bin/env python
"""Evaluate a model on test.json against the baselines: parse rate, speed and curvature errors,
ADE/FDE in metres, per bucket. Works with a base model, a LoRA adapter, a merged model or a full
fine-tune checkpoint; writes predictions.jsonl, metrics.json, report.md, PNG plots and a gallery
(the best, median and worst clips, their true and predicted paths drawn on the camera image
through the clip's calibration). Runs on the GPU when there is one (--device to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from qwenvl import distributed
from qwenvl.chat import PromptSettings, prompt_mismatch
from qwenvl.cli import UserError, add_generation_arguments, add_inference_arguments, run_script
from qwenvl.data.samples import load_samples, mean_pairs
from qwenvl.evaluate.predictions import predict_samples, test_set, write_predictions
from qwenvl.evaluate.report import metrics_table, score, write_report
from qwenvl.files import (
    atomic_output_dir,
    check_apart,
    check_apart_from_files,
    check_output_dir,
    file_folders,
    writable_parent,
)
from qwenvl.inference.opener import open_for_script
from qwenvl.inference.spec import read_spec


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
    add_generation_arguments(
        parser,
        "free decoding: measure raw format-following (unparsed answers are counted) instead "
        "of constraining every answer to the answer grammar",
    )
    parser.add_argument(
        "--gallery-buckets",
        action="store_true",
        help="the gallery's best, median and worst clips per speed and turn bucket too",
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
    # Its mean is all the baseline needs, summed in bulk: train.json may hold millions.
    return mean_pairs(read_samples(path), "future")[None]


def check_prompt(args: argparse.Namespace, model_prompt: PromptSettings | None) -> None:
    """A model is evaluated on data built with the prompt it was trained on."""
    data_dir = Path(args.test_json).parent
    try:
        data_prompt = PromptSettings.load(data_dir)
    except ValueError as err:
        raise UserError(str(err)) from None
    mismatch = prompt_mismatch(model_prompt, data_prompt)
    if mismatch:
        raise UserError(
            f"{args.model_path} was trained on another prompt than {args.test_json} holds "
            f"({mismatch}); evaluate it on data built with its prompt"
        )


def once_each(samples, test_json: str):
    """The samples with each id once (the first), and a line when the test file repeats ids:
    a repeated sample would be scored as many times as it appears."""
    ids = samples.column("id", fill=None)
    _, first = np.unique(ids.astype(str), return_index=True)
    if len(first) == len(samples):
        return samples
    print(
        f"note: {test_json}: {len(samples) - len(first)} samples repeat the id of an earlier "
        "one; each id is scored once",
        file=sys.stderr,
    )
    return samples.subset(np.sort(first))


def run(args: argparse.Namespace) -> int:
    if args.backend == "vllm" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "--backend vllm spreads a model over GPUs itself (--tensor-parallel-size): run "
            "evaluate.py as one process, without NPROC_PER_NODE or torchrun"
        )
    rank, world = distributed.rank_and_world()
    try:
        spec = read_spec(args.model_path, args.base_model, Path(args.test_json).parent)
    except ValueError as err:
        raise UserError(str(err)) from None
    samples = once_each(read_samples(Path(args.test_json), args.max_samples), args.test_json)
    inputs = {
        **spec.local_inputs(),
        "--test-json's folder": Path(args.test_json).parent,
        "--train-json's folder": Path(args.train_json).parent if args.train_json else None,
    }
    check_apart(args.output_dir, inputs)
    # Video paths as stored: relative to the test file's folder (absolute ones stay so).
    videos = file_folders(samples.column("video", fill=None).tolist(), Path(args.test_json).parent)
    check_apart_from_files(args.output_dir, f"the videos of {args.test_json}", videos)
    check_output_dir(args.output_dir, args.overwrite_output)
    writable_parent(args.output_dir)
    if not samples:
        raise UserError(f"{args.test_json}: no samples")
    check_prompt(args, spec.prompt)
    if world > 1 and args.device is None and torch.cuda.is_available():
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"  # one GPU per rank
    backend = open_for_script(args, spec)
    ranks = f" x {world} ranks" if world > 1 else ""
    if rank == 0:
        print(f"{args.model_path}: {backend.describe()}{ranks}")
    records, unscored = predict_samples(
        backend, samples, rank, world, args.batch_size, args.max_new_tokens, args.constrained
    )
    backend.close()
    if rank != 0:
        return 0
    for number, (sample_id, why) in enumerate(unscored.items()):
        if number < 20:
            print(f"not scored: {sample_id}: {why}", file=sys.stderr)
    if not records:
        raise UserError(f"{args.test_json}: no sample could be answered ({len(unscored)} not)")
    metrics = score(records, train_future(args))
    metrics["model_path"] = args.model_path
    metrics["backend"] = backend.name
    metrics["decoding"] = "constrained" if args.constrained else "free"
    metrics["test_set"] = test_set(args.test_json, samples)
    metrics["unscored"] = {"count": len(unscored), "samples": unscored}
    with atomic_output_dir(args.output_dir, args.overwrite_output) as tmp:
        write_predictions(records, tmp / "predictions.jsonl")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        gallery = write_report(metrics, records, args.model_path, tmp, args.gallery_buckets)
    print(metrics_table(metrics))
    if gallery["without_overlay"]:
        print(
            f"{len(gallery['without_overlay'])} clips have no calibration to draw their paths "
            "on (see gallery.json); they are drawn plain"
        )
    left_out = f", {len(unscored)} samples not scored (see metrics.json)" if unscored else ""
    print(
        f"parsed {metrics['parse']['parsed']}/{metrics['parse']['total']}{left_out}; report: "
        f"{Path(args.output_dir) / 'report.md'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return distributed.leave(run_script(parse_args, run, argv))


if __name__ == "__main__":
    distributed.relaunch_under_torchrun(__file__, sys.argv[1:])
    distributed.die_with_parent()
    sys.exit(main())
