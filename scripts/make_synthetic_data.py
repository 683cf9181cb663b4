#!/usr/bin/env python
"""Write synthetic driving clips in the PhysicalAI-AV raw layout (for tests and the demo).

The layout is the real dataset's (root clip_index.parquet with an official-style split,
features.csv, metadata/, camera and egomotion chunk zips, calibration), and so is the timing:
605 frames per 20 s from about -14 ms, egomotion at 100 Hz with a sparse tail. Each clip has a
smooth random ego motion (unicycle model) and a rendered front-camera video of a textured
ground plane seen from that motion. The output is built in a hidden sibling
directory and renamed into place at the end, so an interrupted run leaves no dataset behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from qwenvl.synthetic import write_synthetic_dataset


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


def check_output(output_dir: Path, overwrite: bool) -> None:
    """Raise ValueError when writing to `output_dir` would clobber something not allowed."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(f"{output_dir} exists and is not empty (pass --overwrite-output)")


def move_into_place(staging: Path, output_dir: Path) -> None:
    """Rename the finished `staging` directory onto `output_dir`, replacing any old one."""
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        output_dir.rename(old)
        staging.rename(output_dir)
        shutil.rmtree(old)
    else:
        staging.rename(output_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir = args.output_dir.resolve()
    staging = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    start = time.perf_counter()
    try:
        check_output(output_dir, args.overwrite_output)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
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
        )
        move_into_place(staging, output_dir)
    except (ValueError, OSError) as error:
        print(f"make_synthetic_data: error: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - start
    chunks = dataset.clip_index["chunk"].nunique()
    print(f"wrote {len(dataset.clip_index)} clips in {chunks} chunks to {output_dir}")
    for path in dataset.files:
        relative = path.relative_to(staging)
        size_mb = (output_dir / relative).stat().st_size / 1e6
        print(f"  {relative}  ({size_mb:.2f} MB)")
    print(f"{seconds:.1f} s, {seconds / len(dataset.clip_index):.2f} s per clip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
