#!/usr/bin/env python
"""Write synthetic driving clips in the PhysicalAI-AV raw layout (for tests and the demo).

The layout is the real dataset's (root clip_index.parquet with an official-style split,
features.csv, metadata/, camera and egomotion chunk zips, calibration), and so is the timing:
605 frames per 20 s from about -14 ms, egomotion at 100 Hz with a sparse tail. Each clip has a
smooth random ego motion (unicycle model) and a rendered video of a textured ground plane seen
from that motion by each camera asked (the front camera by default; --cameras with the
dataset's names: the cross cameras look sideways, the tele ones narrow, each on its own clock
and with its own calibration rows). The output is built in a hidden sibling
directory and renamed into place at the end, so an interrupted run leaves no dataset behind.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from qwenvl.cli import UserError, run_script
from qwenvl.files import atomic_output_dir
from qwenvl.prepare.rawdata import DEFAULT_CAMERA
from qwenvl.standins.render import MOUNTS
from qwenvl.standins.synthetic import write_synthetic_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True, help="dataset root to create")
    parser.add_argument("--num-clips", type=int, default=8, help="clips to write (default 8)")
    parser.add_argument(
        "--clip-seconds", type=float, default=20, help="length of each clip in seconds (default 20)"
    )
    parser.add_argument("--width", type=int, default=640, help="video width, even (default 640)")
    parser.add_argument("--height", type=int, default=360, help="video height, even (default 360)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same dataset (default 0)"
    )
    parser.add_argument(
        "--cameras",
        nargs="+",
        default=[DEFAULT_CAMERA],
        choices=list(MOUNTS),
        metavar="CAMERA",
        help=f"cameras to render, as the dataset names them ({', '.join(MOUNTS)}) "
        "(default: %(default)s)",
    )
    parser.add_argument("--chunk-size", type=int, default=4, help="clips per chunk zip (default 4)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.125,
        help="share of clips the index marks 'val' (default 0.125)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        help="share of clips the index marks 'test' (default 0.25)",
    )
    parser.add_argument(
        "--overwrite-output",
        action="store_true",
        help="replace --output-dir if it already exists and is not empty",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with atomic_output_dir(args.output_dir, args.overwrite_output) as staging:
        try:
            dataset = write_synthetic_dataset(
                staging,
                num_clips=args.num_clips,
                clip_seconds=args.clip_seconds,
                width=args.width,
                height=args.height,
                seed=args.seed,
                chunk_size=args.chunk_size,
                progress=not args.no_progress,
                val_fraction=args.val_fraction,
                test_fraction=args.test_fraction,
                cameras=tuple(args.cameras),
            )
        except ValueError as err:
            raise UserError(str(err)) from None
        sizes = {path.relative_to(staging): path.stat().st_size / 1e6 for path in dataset.files}
    seconds = time.perf_counter() - start
    chunks = dataset.clip_index["chunk"].nunique()
    print(f"wrote {len(dataset.clip_index)} clips in {chunks} chunks to {args.output_dir}")
    for relative, size_mb in sizes.items():
        print(f"  {relative}  ({size_mb:.2f} MB)")
    print(f"{seconds:.1f} s, {seconds / len(dataset.clip_index):.2f} s per clip")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
