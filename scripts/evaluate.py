#!/usr/bin/env python
"""Evaluate a model on test.json against the baselines: parse rate, speed and curvature errors,
ADE/FDE in metres, per bucket. Works with a base model, a LoRA adapter, a merged model or a full
fine-tune checkpoint; writes predictions.jsonl, metrics.json, report.md and PNG plots. Runs on
the GPU when there is one (--device to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from qwenvl.cli import (
    UserError,
    add_generation_arguments,
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
    add_generation_arguments(
        parser,
        "free decoding: measure raw format-following (unparsed answers are counted) instead "
        "of constraining every answer to the answer grammar",
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


def generate_records(args, loaded, samples: list[dict], rank: int, world: int) -> list[dict]:
    """prediction records of this rank's share (every world-th sample), with their index."""
    from qwenvl.inference import clips_of, generate_answers

    share = list(enumerate(samples))[rank::world]
    records = []
    with tqdm(total=len(share), desc="generating", unit="clip", disable=rank != 0) as bar:
        for start in range(0, len(share), args.batch_size):
            batch = share[start : start + args.batch_size]
            clips = clips_of([s for _, s in batch], loaded.settings)
            texts = generate_answers(
                loaded, clips, max_new_tokens=args.max_new_tokens, constrained=args.constrained
            )
            for (index, sample), text in zip(batch, texts, strict=True):
                records.append({"index": index, **prediction_record(sample, text)})
            bar.update(len(batch))
    return records


def run(args: argparse.Namespace) -> int:
    rank, world = distributed_rank()
    check_output_dir(args.output_dir, args.overwrite_output)
    samples = read_samples(Path(args.test_json), args.max_samples)
    if not samples:
        raise UserError(f"{args.test_json}: no samples")
    if world > 1 and args.device is None and torch.cuda.is_available():
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"  # one GPU per rank
    loaded = load_inference_model(args, args.model_path, data_dir=Path(args.test_json).parent)
    ranks = f" x {world} ranks" if world > 1 else ""
    if rank == 0:
        print(f"{args.model_path}: {loaded.describe()}{ranks}")
    records = gather_records(generate_records(args, loaded, samples, rank, world), world)
    if rank != 0:
        return 0
    for record in records:
        del record["index"]
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


def distributed_rank() -> tuple[int, int]:
    """(rank, world size); under torchrun the process group is set up here (NCCL with GPUs,
    gloo without)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), world


def gather_records(records: list[dict], world: int) -> list[dict]:
    """Every rank's records on every rank, in the order of test.json whatever the world size."""
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    return sorted(records, key=lambda r: r["index"])


def relaunch_under_torchrun(argv: list[str]) -> None:
    """NPROC_PER_NODE=N without torchrun: run this script again under torchrun, N ranks."""
    nproc = int(os.environ.get("NPROC_PER_NODE", "1") or 1)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", str(nproc), __file__, *argv]
        os.execv(sys.executable, command)


def main(argv: list[str] | None = None) -> int:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    relaunch_under_torchrun(sys.argv[1:])
    status = main()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(status)
