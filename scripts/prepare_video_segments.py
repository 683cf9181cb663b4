#!/usr/bin/env python
"""Cut downloaded clips into 1-second, 30-frame segments labelled with the next second's motion.

Reads the chunk zips as downloaded (or extracted), decodes each source clip once, writes one
H.264 mp4 per segment and a manifest.parquet with timestamps and labels.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from qwenvl.cli import UserError, atomic_output_dir, atomic_write_text, check_output_dir, cli_main
from qwenvl.prep import process_clip
from qwenvl.rawdata import DEFAULT_CAMERA, RawDataset
from qwenvl.segments import ClipError

MANIFEST = "manifest.parquet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", required=True, help="dataset root (holds camera/, labels/, metadata/)"
    )
    parser.add_argument("--output-dir", required=True, help="where segments and manifest go")
    parser.add_argument(
        "--camera", default=DEFAULT_CAMERA, help="camera to read (default: %(default)s)"
    )
    parser.add_argument(
        "--max-width",
        type=int,
        default=640,
        help="downscale wider frames to this width, aspect kept (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="parallel clip workers (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite-output", action="store_true", help="replace an existing output directory"
    )
    args = parser.parse_args(argv)
    if args.max_width < 32 or args.workers < 1:
        parser.error("--max-width must be >= 32 and --workers >= 1")
    return args


_dataset: RawDataset | None = None


def _work(task: tuple[str, str, str, int, str, int]) -> tuple[str, list[dict] | str]:
    """Worker entry: (clip_id, rows) on success, (clip_id, cause) when the clip is skipped."""
    global _dataset
    root, camera, clip_id, chunk, output_dir, max_width = task
    if _dataset is None or str(_dataset.root) != root:
        _dataset = RawDataset(Path(root), camera)
    try:
        return clip_id, process_clip(_dataset, clip_id, chunk, Path(output_dir), max_width)
    except ClipError as err:
        return clip_id, str(err)


def run(args: argparse.Namespace) -> int:
    dataset = RawDataset(Path(args.data_dir), args.camera)
    try:
        index = dataset.clip_index
    except (FileNotFoundError, OSError, ValueError) as err:
        raise UserError(str(err)) from None
    check_output_dir(args.output_dir, args.overwrite_output)
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    with atomic_output_dir(args.output_dir, args.overwrite_output) as tmp:
        tasks = [
            (str(dataset.root), args.camera, clip_id, int(chunk), str(tmp), args.max_width)
            for clip_id, chunk in index.itertuples(index=False)
        ]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = pool.map(_work, tasks)
            for clip_id, result in tqdm(
                results, total=len(tasks), desc="segmenting clips", unit="clip"
            ):
                if isinstance(result, str):
                    skipped[clip_id] = result
                    tqdm.write(f"skipped clip {clip_id}: {result}", file=sys.stderr)
                else:
                    rows.extend(result)
        if not rows:
            raise UserError(f"{args.data_dir}: no clip produced a segment ({len(skipped)} skipped)")
        manifest = pd.DataFrame(rows).sort_values(["clip_id", "segment_index"], ignore_index=True)
        manifest.to_parquet(tmp / MANIFEST, index=False)
        atomic_write_text(
            tmp / "skipped.json", pd.Series(skipped, dtype=str).to_json(indent=2) + "\n"
        )
    clips_done = manifest["clip_id"].nunique()
    print(
        f"{clips_done} clips -> {len(manifest)} segments in {args.output_dir} "
        f"({len(skipped)} clips skipped)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
