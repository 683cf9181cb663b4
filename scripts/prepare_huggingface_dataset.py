#!/usr/bin/env python
"""Turn the segment manifest into a Hugging Face DatasetDict split train/validation/test by clip.

Each row holds a chat `messages` list (user: the video with its fps and the prompt; assistant:
the answer text) plus the numeric labels used by evaluation and the baselines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from datasets import Dataset, DatasetDict
from tqdm import tqdm

from qwenvl.answer import AnswerFormat
from qwenvl.cli import UserError, atomic_output_dir, check_output_dir, cli_main
from qwenvl.splits import SPLITS, build_split_rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments-dir", required=True, help="output of prepare_video_segments.py")
    parser.add_argument("--output-dir", required=True, help="where the DatasetDict is saved")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of clips for validation (default: %(default)s)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="share of clips for test (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the clip split (default: %(default)s)"
    )
    parser.add_argument(
        "--velocity-decimals",
        type=int,
        default=1,
        help="decimals of velocity in the answer (default: %(default)s)",
    )
    parser.add_argument(
        "--curvature-decimals",
        type=int,
        default=3,
        help="decimals of curvature in the answer (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite-output", action="store_true", help="replace an existing output directory"
    )
    args = parser.parse_args(argv)
    if not (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1):
        parser.error("--val-fraction and --test-fraction must lie in [0, 1)")
    if args.val_fraction + args.test_fraction >= 1:
        parser.error("--val-fraction + --test-fraction must leave clips for training")
    return args


def run(args: argparse.Namespace) -> int:
    segments_dir = Path(args.segments_dir)
    manifest_path = segments_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: not found (run prepare_video_segments.py first)")
    check_output_dir(args.output_dir, args.overwrite_output)
    try:
        answer_format = AnswerFormat(args.velocity_decimals, args.curvature_decimals)
    except ValueError as err:
        raise UserError(str(err)) from None
    manifest = pd.read_parquet(manifest_path)
    rows = build_split_rows(
        manifest, segments_dir, args.val_fraction, args.test_fraction, args.seed, answer_format
    )
    with atomic_output_dir(args.output_dir, args.overwrite_output) as tmp:
        splits = {}
        for name in tqdm(SPLITS, desc="building splits", unit="split"):
            if rows[name]:
                splits[name] = Dataset.from_list(rows[name])
        features = next(iter(splits.values())).features
        # An empty split keeps the schema, so every split loads back the same way.
        empty = Dataset.from_dict({key: [] for key in features}, features=features)
        splits = {name: splits.get(name, empty) for name in SPLITS}
        DatasetDict(splits).save_to_disk(str(tmp), num_shards={name: 1 for name in SPLITS})
        answer_format.save(tmp)
    counts = ", ".join(f"{name} {len(rows[name])}" for name in SPLITS)
    clips = ", ".join(f"{name} {len({r['clip_id'] for r in rows[name]})}" for name in SPLITS)
    print(f"segments: {counts}; clips: {clips} -> {args.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
