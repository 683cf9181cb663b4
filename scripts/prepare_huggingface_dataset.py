#!/usr/bin/env python
"""Turn the segment manifest into a Hugging Face DatasetDict split train/validation/test by clip.

The split is the dataset's official one by default (the clip index's `split`, or
splits/<name>.parquet with --split-name); --split by-clip draws a seeded split by clip for data
without one. Each row holds a chat `messages` list (user: the video with its fps and the
prompt; assistant: the answer text) plus the numeric labels used by evaluation and baselines.
With --ego-history, each prompt also holds the car's past (speed, curvature), read from its
clip's egomotion up to the segment's last frame; a segment without that much egomotion before
it is left out and named in dropped_for_history.json. Segments cut with several cameras give
rows of every camera by default, each clip after its camera's name in the prompt; --cameras
keeps some of them (the segments' own camera first), --cameras with that camera alone gives
the one-camera task on the same segments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings
from qwenvl.cli import UserError, run_script
from qwenvl.files import atomic_output_dir, atomic_write_text, check_apart, check_output_dir
from qwenvl.layout import MANIFEST, RAW_SOURCE, SEGMENTS_SOURCE
from qwenvl.prepare.hf_dataset import build_dataset
from qwenvl.prepare.rawdata import DEFAULT_CAMERA, RawDataset, read_split_labels
from qwenvl.prepare.splits import official_assignment, split_clips

DROPPED_FOR_HISTORY = "dropped_for_history.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments-dir", required=True, help="output of prepare_video_segments.py")
    parser.add_argument("--output-dir", required=True, help="where the DatasetDict is saved")
    parser.add_argument(
        "--split",
        choices=["official", "by-clip"],
        default="official",
        help="official: the dataset's own train/val/test; by-clip: a seeded split by clip, "
        "for data without one (default: %(default)s)",
    )
    parser.add_argument(
        "--split-name",
        help="official split from splits/<NAME>.parquet of the dataset instead of the index's",
    )
    parser.add_argument(
        "--data-dir",
        help="dataset root holding splits/ (default: the one the segments were cut from)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="by-clip: share of clips for validation (default: %(default)s)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="by-clip: share of clips for test (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="by-clip: seed of the split (default: %(default)s)"
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
        "--ego-history",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="write the car's past (speed, curvature) of this many seconds into each prompt, "
        "from its clip's egomotion up to the segment's last frame (default: 0, the video alone)",
    )
    parser.add_argument(
        "--history-hz",
        type=float,
        default=10.0,
        help="pairs per second of the ego history (default: %(default)s)",
    )
    parser.add_argument(
        "--cameras",
        nargs="+",
        metavar="CAMERA",
        help="the cameras whose clips the rows show, of those the segments were cut with, "
        "their own camera first (default: all of them)",
    )
    parser.add_argument(
        "--overwrite-output", action="store_true", help="replace an existing output directory"
    )
    args = parser.parse_args(argv)
    if not (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1):
        parser.error("--val-fraction and --test-fraction must lie in [0, 1)")
    if args.val_fraction + args.test_fraction >= 1:
        parser.error("--val-fraction + --test-fraction must leave clips for training")
    if not (math.isfinite(args.ego_history) and 0 <= args.ego_history <= 3600):
        parser.error("--ego-history: seconds in [0, 3600]")
    if not (math.isfinite(args.history_hz) and 0 < args.history_hz <= 1000):
        parser.error("--history-hz: a rate in (0, 1000]")
    if args.split_name and args.split != "official":
        parser.error("--split-name picks an official split: drop --split by-clip")
    return args


def raw_dataset(args: argparse.Namespace) -> RawDataset:
    """The dataset the segments were cut from (their clips' egomotion holds the history)."""
    root = data_dir(args)
    source = Path(args.segments_dir) / RAW_SOURCE
    if root is None or not Path(root).is_dir():
        raise UserError(
            f"{args.segments_dir}: --ego-history reads the clips' egomotion, and the dataset "
            f"they were cut from is not there ({root}); pass --data-dir"
        )
    camera = json.loads(source.read_text())["camera"] if source.is_file() else DEFAULT_CAMERA
    return RawDataset(Path(root), camera)


def segment_cameras(args: argparse.Namespace) -> list[str]:
    """The cameras the segments were cut with, their own first (one for segments cut before
    several cameras could be)."""
    source = Path(args.segments_dir) / RAW_SOURCE
    if not source.is_file():
        return [DEFAULT_CAMERA]
    cut = json.loads(source.read_text())
    return list(cut.get("cameras") or [cut.get("camera", DEFAULT_CAMERA)])


def shown_cameras(args: argparse.Namespace) -> tuple[str, ...]:
    """The prompt's cameras: none for one camera (its clip unlabelled, as before several could
    be), else those asked, checked against the segments'."""
    cut = segment_cameras(args)
    chosen = args.cameras or cut
    unknown = [c for c in chosen if c not in cut]
    if unknown:
        raise UserError(
            f"--cameras: the segments in {args.segments_dir} hold no {unknown[0]} (cut with "
            f"{', '.join(cut)})"
        )
    if chosen[0] != cut[0]:
        raise UserError(f"--cameras: the segments were cut on {cut[0]}'s timeline; name it first")
    if len(set(chosen)) < len(chosen):
        raise UserError("--cameras: a camera is named twice")
    return tuple(chosen) if len(chosen) > 1 else ()


def data_dir(args: argparse.Namespace) -> str | None:
    """The dataset root: --data-dir, else the one the segments were cut from."""
    source = Path(args.segments_dir) / RAW_SOURCE
    if args.data_dir is None and source.is_file():
        return json.loads(source.read_text())["data_dir"]
    return args.data_dir


def official_labels(args: argparse.Namespace, manifest: pd.DataFrame) -> tuple[pd.Series, str]:
    """clip_id -> official split label, and where it came from."""
    clips = manifest.drop_duplicates("clip_id").set_index("clip_id")
    if args.split_name:
        root = data_dir(args)
        if root is None:
            raise UserError(f"{args.segments_dir}: no {RAW_SOURCE}; pass --data-dir")
        try:
            labels = read_split_labels(Path(root), args.split_name)
        except (FileNotFoundError, KeyError, ValueError) as err:
            raise UserError(str(err).splitlines()[0]) from None
        return labels.reindex(clips.index), f"official, splits/{args.split_name}.parquet"
    if "split" not in clips.columns or clips["split"].isna().all():
        raise UserError(
            f"{args.segments_dir}: the clip index has no official split; use --split by-clip"
        )
    return clips["split"], "official, clip_index.parquet"


def clip_assignment(args: argparse.Namespace, manifest: pd.DataFrame) -> tuple[dict, str]:
    """clip_id -> train / validation / test, and a phrase saying how it was decided."""
    if args.split == "by-clip":
        clip_ids = manifest["clip_id"].tolist()
        described = (
            f"by clip (val {args.val_fraction:g}, test {args.test_fraction:g}, seed {args.seed})"
        )
        return split_clips(clip_ids, args.val_fraction, args.test_fraction, args.seed), described
    labels, described = official_labels(args, manifest)
    try:
        return official_assignment(labels), described
    except ValueError as err:
        raise UserError(f"{args.segments_dir}: {err}") from None


def run(args: argparse.Namespace) -> int:
    segments_dir = Path(args.segments_dir)
    manifest_path = segments_dir / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: not found (run prepare_video_segments.py first)")
    check_apart(args.output_dir, {"--segments-dir": segments_dir, "--data-dir": data_dir(args)})
    check_output_dir(args.output_dir, args.overwrite_output)
    try:
        answer_format = AnswerFormat(args.velocity_decimals, args.curvature_decimals)
    except ValueError as err:
        raise UserError(str(err)) from None
    # Only the columns that decide the split are read whole; rows are built batch by batch.
    present = set(pq.ParquetFile(manifest_path).schema_arrow.names)
    clips = pd.read_parquet(
        manifest_path, columns=[c for c in ("clip_id", "split") if c in present]
    )
    assignment, described = clip_assignment(args, clips)
    cameras = shown_cameras(args)
    try:
        prompt = PromptSettings(
            ego_history_seconds=args.ego_history, history_hz=args.history_hz, cameras=cameras
        )
    except ValueError as err:
        raise UserError(f"--ego-history / --history-hz: {err}") from None
    raw = raw_dataset(args) if prompt.history_pairs else None
    with atomic_output_dir(args.output_dir, args.overwrite_output) as tmp:
        with tqdm(total=len(clips), desc="building splits", unit="segment") as bar:
            counts, dropped = build_dataset(
                manifest_path, segments_dir, assignment, prompt, answer_format, tmp, bar.update,
                raw=raw,
            )  # fmt: skip
        if not sum(segments for _, segments in counts.values()):
            first = next(iter(dropped.items()), ("", "no segment in the manifest"))
            raise UserError(
                f"{args.segments_dir}: no segment is left ({len(dropped)} dropped for want of "
                f"{args.ego_history:g} s of egomotion before them; the first, {first[0]}: "
                f"{first[1]})"
            )
        if dropped:
            text = json.dumps(dropped, indent=2, sort_keys=True) + "\n"
            atomic_write_text(tmp / DROPPED_FOR_HISTORY, text)
        answer_format.save(tmp)
        prompt.save(tmp)
        # The segments the rows point at: inputs of the next step too.
        source = json.dumps({"segments_dir": str(segments_dir.resolve())}, indent=2) + "\n"
        atomic_write_text(tmp / SEGMENTS_SOURCE, source)
    summary = ", ".join(
        f"{name} {clip_count} clips / {segment_count} segments"
        for name, (clip_count, segment_count) in counts.items()
    )
    print(f"split: {described}; {summary} -> {args.output_dir}")
    if cameras:
        print(f"cameras: {', '.join(cameras)}")
    if dropped:
        first = next(iter(dropped.items()))
        print(
            f"{len(dropped)} segments without {args.ego_history:g} s of egomotion before them are "
            f"left out ({DROPPED_FOR_HISTORY}; the first, {first[0]}: {first[1]})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
