#!/usr/bin/env python
"""Cut downloaded clips into 1-second, 30-frame segments labelled with the next second's motion.

Reads the dataset as NVIDIA ships it (root clip_index.parquet, features.csv, the chunk zips as
downloaded or extracted), processes the valid clips of the chunks present, decodes each clip
once, and writes one H.264 mp4 per segment, manifest.parquet (timestamps, labels, official
split), skipped.json (clips left out, with the reason), dropped_segments.json and summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from qwenvl.cli import UserError, atomic_output_dir, atomic_write_text, check_output_dir, cli_main
from qwenvl.prep import SOURCE, process_clip
from qwenvl.rawdata import DEFAULT_CAMERA, ClipSelection, RawDataset
from qwenvl.segments import ClipError

MANIFEST = "manifest.parquet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        required=True,
        help="dataset root (holds clip_index.parquet, features.csv, camera/, labels/)",
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


def _work(task: tuple[str, str, str, int, str, int]) -> tuple[str, tuple | str]:
    """Worker entry: (clip_id, (rows, dropped segments)), or (clip_id, cause) when skipped."""
    global _dataset
    root, camera, clip_id, chunk, output_dir, max_width = task
    if _dataset is None or str(_dataset.root) != root:
        _dataset = RawDataset(Path(root), camera)
    try:
        return clip_id, process_clip(_dataset, clip_id, chunk, Path(output_dir), max_width)
    except ClipError as err:
        return clip_id, str(err)


def select(dataset: RawDataset) -> ClipSelection:
    """The clips to process, with a line saying what the index holds beyond them."""
    try:
        selection = dataset.select_clips()
    except (FileNotFoundError, OSError, ValueError) as err:
        raise UserError(str(err).splitlines()[0]) from None
    chunks = selection.clips["chunk"].nunique()
    print(
        f"{len(selection.clips)} clips in {chunks} downloaded chunks; left out: "
        f"{selection.not_downloaded} index clips in chunks not downloaded, "
        f"{len(selection.invalid)} invalid (clip_is_valid false), "
        f"{len(selection.unavailable)} without camera or egomotion"
    )
    return selection


def segment_all(
    dataset: RawDataset, selection: ClipSelection, args: argparse.Namespace, tmp: Path
) -> tuple[list[dict], dict[str, str], dict[str, str]]:
    """(manifest rows, skipped clip -> why, dropped segment -> why) over a pool of workers."""
    rows: list[dict] = []
    skipped: dict[str, str] = dict(selection.unavailable)
    dropped: dict[str, str] = {}
    tasks = [
        (str(dataset.root), args.camera, clip_id, int(chunk), str(tmp), args.max_width)
        for clip_id, chunk in selection.clips["chunk"].items()
    ]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = pool.map(_work, tasks)
        for clip_id, result in tqdm(
            results, total=len(tasks), desc="segmenting clips", unit="clip"
        ):
            if isinstance(result, str):
                skipped[clip_id] = result
                tqdm.write(f"skipped clip {clip_id}: {result}", file=sys.stderr)
                continue
            clip_rows, clip_dropped = result
            split = selection.clips.at[clip_id, "split"]
            rows += [{**row, "split": split} for row in clip_rows]
            dropped.update(clip_dropped)
    return rows, skipped, dropped


def run(args: argparse.Namespace) -> int:
    dataset = RawDataset(Path(args.data_dir), args.camera)
    selection = select(dataset)
    check_output_dir(args.output_dir, args.overwrite_output)
    with atomic_output_dir(args.output_dir, args.overwrite_output) as tmp:
        rows, skipped, dropped = segment_all(dataset, selection, args, tmp)
        if not rows:
            raise UserError(f"{args.data_dir}: no clip produced a segment ({len(skipped)} skipped)")
        manifest = pd.DataFrame(rows).sort_values(["clip_id", "segment_index"], ignore_index=True)
        manifest.to_parquet(tmp / MANIFEST, index=False)
        summary = {
            "clips_segmented": int(manifest["clip_id"].nunique()),
            "segments": len(manifest),
            "clips_skipped": len(skipped),
            "segments_dropped": len(dropped),
            "clips_invalid": len(selection.invalid),
            "clips_in_chunks_not_downloaded": selection.not_downloaded,
        }
        source = {"data_dir": str(dataset.root.resolve()), "camera": args.camera}
        for name, content in (
            ("skipped.json", skipped),
            ("dropped_segments.json", dropped),
            ("summary.json", summary),
            (SOURCE, source),
        ):
            atomic_write_text(tmp / name, json.dumps(content, indent=2, sort_keys=True) + "\n")
    print(
        f"{summary['clips_segmented']} clips -> {len(manifest)} segments in {args.output_dir} "
        f"({len(skipped)} clips skipped, {len(dropped)} segments dropped, "
        f"{len(selection.invalid)} invalid clips and {selection.not_downloaded} clips of chunks "
        "not downloaded left out)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
