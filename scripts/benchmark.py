#!/usr/bin/env python
"""Measure the pipeline's speed against the naive way of doing the same work, on the same inputs.

prep: seconds per 20 s source clip, ours (decode once) against reopen-and-seek per segment with
OpenCV mp4v at full resolution, and the pure decode time as the floor. loader: training samples
per second per DataLoader worker against qwen-vl-utils + processor in the main process. train:
s/step and tokens/s with the label-only loss training uses (LoRA, full; on CUDA with
--model-config, a real-sized model per attention kernel and batch size, with MFU). generate:
answer tokens/s per backend (--backend transformers, vllm or both on the same clips), free and
constrained, with the transformers backend's batching, caches, kernels and --compile. scale: the
dataset steps and a rank's training start-up at N segments, against the row-by-row way. tokens:
visual tokens per sample of each camera set at the video settings (VIDEO_* variables), no model.
The benchmarks live in qwenvl/bench/, one module each; the naive ways in qwenvl/bench/reference.py
(their dependencies are the bench extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from qwenvl.cli import BACKENDS, run_script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what",
        choices=["prep", "loader", "train", "generate", "scale", "tokens", "all"],
        help="which benchmark (all: every one but scale and tokens)",
    )
    parser.add_argument(
        "--segments",
        default="10000,100000,1000000",
        help="scale: manifest sizes to measure, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--reference-up-to",
        type=int,
        default=100000,
        help="scale: also run the way before, up to this many segments (default: %(default)s)",
    )
    parser.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    parser.add_argument("--work-dir", help="where inputs are built (default: a temporary folder)")
    parser.add_argument(
        "--model-path", help="model for train/generate (default: the tiny model, built here)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats, best kept (default: %(default)s)"
    )
    parser.add_argument(
        "--model-config",
        choices=["2b", "4b", "8b"],
        help="train: a Qwen3-VL-<size>-Instruct-shaped model built from its published config "
        "(random weights, no download) instead of --model-path; timings need CUDA",
    )
    parser.add_argument(
        "--device",
        help="device for train/generate: cpu, cuda or cuda:N (default: cuda when there is a GPU)",
    )
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "both"],
        default="transformers",
        help="generate: which backend answers (both: each on the same clips in one run)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="generate: compile the transformers backend's decoding step (CUDA)",
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="generate: clips per batch (default: %(default)s)"
    )
    parser.add_argument(
        "--resolutions",
        default="640x360,1920x1080",
        help="prep source sizes (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be positive")
    return args


def run(args: argparse.Namespace) -> int:
    from qwenvl.bench.common import machine, prepare_inputs

    work_ctx = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(args.work_dir or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    wanted = ["prep", "loader", "train", "generate"] if args.what == "all" else [args.what]
    results = {"machine": machine()}
    if "prep" in wanted:
        from qwenvl.bench.prep import bench_prep

        results["prep"] = bench_prep(work, args.repeats, args.resolutions)
    if "tokens" in wanted:
        from qwenvl.bench.tokens import bench_tokens

        results["tokens"] = bench_tokens()
    if "scale" in wanted:
        from qwenvl.bench.scale import bench_scale

        model_path = args.model_path or prepare_inputs(work, None)[0]
        results["scale"] = [
            bench_scale(work, int(n), model_path, int(n) <= args.reference_up_to)
            for n in args.segments.split(",")
        ]
    if set(wanted) & {"loader", "train", "generate"}:
        from qwenvl.model import resolve_device

        # A published config off CUDA is only built and counted: it needs the tokenizer alone.
        counted_only = (
            wanted == ["train"] and args.model_config and resolve_device(args.device).type != "cuda"
        )
        model_path, train_json = prepare_inputs(work, args.model_path, data=not counted_only)
        if "loader" in wanted:
            from qwenvl.bench.loader import bench_loader

            results["loader"] = bench_loader(model_path, train_json, args.repeats)
        if "train" in wanted:
            from qwenvl.bench import training

            results["train"] = (
                training.bench_train_config(
                    args.model_config, model_path, train_json, args.repeats, args.device
                )
                if args.model_config
                else training.bench_train(model_path, train_json, args.repeats, args.device)
            )
        if "generate" in wanted:
            from qwenvl.bench.generation import bench_generate

            results["generate"] = bench_generate(
                model_path, train_json, args.repeats, args.device, args.batch, args.backend,
                args.compile,
            )  # fmt: skip
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


def internal(argv: list[str]) -> bool:
    """The children the scale benchmark measures in fresh processes (True when argv is one)."""
    from qwenvl.bench import reference, scale

    commands = {
        "_startup": lambda a: scale.startup(a[0], a[1], "--reference" in a[2:]),
        "_reference-dataset": lambda a: reference.reference_dataset(Path(a[0]), Path(a[1])),
        "_reference-convert": lambda a: reference.reference_convert(Path(a[0]), Path(a[1])),
    }
    if not argv or argv[0] not in commands:
        return False
    commands[argv[0]](argv[1:])
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_") and internal(argv):
        return 0
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
