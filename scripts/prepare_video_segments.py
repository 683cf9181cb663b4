#!/usr/bin/env python
"""Cut downloaded clips into 1-second, 30-frame segments labelled with the next second's motion.

Runs on local worker processes, or with --ray on a Ray cluster (one task per clip). Work goes to
a hidden staging folder beside the output and is renamed into place at the end; an interrupted
run continues with --resume, keeping every clip it had finished.

Reads the dataset as NVIDIA ships it (root clip_index.parquet, features.csv, the chunk zips as
downloaded or extracted), processes the valid clips of the chunks present, decodes each clip
once, and writes one H.264 mp4 per segment, manifest.parquet (timestamps, labels, official
split), calibration.parquet (each clip's camera calibration, for the path overlays),
skipped.json (clips left out, with the reason), dropped_segments.json and summary.json.

With --cameras A B C, each segment also holds the other cameras' views: the frames each camera
took, by its own timestamps, within the segment's window on the first camera's timeline (none
after the segment's last frame), written as videos/<clip>/<segment>.<camera>.mp4. A clip that
lacks one of the cameras is skipped with its reason, or kept with fewer views
(--allow-missing-cameras).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from qwenvl.cli import UserError, run_script
from qwenvl.files import (
    atomic_write_text,
    check_apart,
    check_output_dir,
    mark_output,
    replace_path,
    writable_parent,
)
from qwenvl.layout import CALIBRATION, CLIP_RESULTS, MANIFEST, MANIFEST_ROW_GROUP, RAW_SOURCE
from qwenvl.prepare.rawdata import DEFAULT_CAMERA, ClipSelection, RawDataset
from qwenvl.prepare.writer import Cut, finished_clips, segment_clip_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        required=True,
        help="dataset root (holds clip_index.parquet, features.csv, camera/, labels/)",
    )
    parser.add_argument("--output-dir", required=True, help="where segments and manifest go")
    cameras = parser.add_mutually_exclusive_group()
    cameras.add_argument(
        "--cameras",
        nargs="+",
        metavar="CAMERA",
        help="cameras to read, as the dataset names them: the segments are cut on the first's "
        f"timeline, the others join as further views (default: {DEFAULT_CAMERA} alone)",
    )
    cameras.add_argument("--camera", help="one camera to read (the same as --cameras CAMERA)")
    parser.add_argument(
        "--max-width",
        type=int,
        default=Cut.max_width,
        help="downscale wider frames to this width, aspect kept (default: %(default)s)",
    )
    parser.add_argument(
        "--side-max-width",
        type=int,
        default=Cut.side_max_width,
        help="the same for the further cameras' frames, which the model sees at a smaller "
        "size (VIDEO_SIDE_MAX_PIXELS) (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-missing-cameras",
        action="store_true",
        help="keep a clip that lacks one of the further cameras, with fewer views (default: "
        "skip it, with its reason)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="parallel clip workers (default: %(default)s)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run each clip as a Ray task: on the cluster at ADDRESS (e.g. auto, after "
        "`ray start` on the nodes), or on a local Ray when no address is given; --data-dir "
        "and --output-dir must be on storage every node sees",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into the same --output-dir, keeping its finished clips",
    )
    parser.add_argument(
        "--overwrite-output", action="store_true", help="replace an existing output directory"
    )
    args = parser.parse_args(argv)
    if min(args.max_width, args.side_max_width) < 32 or args.workers < 1:
        parser.error("--max-width and --side-max-width must be >= 32, --workers >= 1")
    args.cameras = args.cameras or [args.camera or DEFAULT_CAMERA]
    if len(set(args.cameras)) < len(args.cameras):
        parser.error("--cameras: a camera is named twice")
    args.cut = Cut(args.max_width, args.side_max_width, args.allow_missing_cameras)
    return args


def select(dataset: RawDataset) -> ClipSelection:
    """The clips to process, with a line saying what the index holds beyond them."""
    try:
        _ = dataset.features  # names every camera asked that the dataset lacks
        selection = dataset.select_clips()
    except (FileNotFoundError, OSError, ValueError) as err:
        raise UserError(str(err).splitlines()[0]) from None
    chunks = selection.clips["chunk"].nunique()
    print(
        f"{len(selection.clips)} clips in {chunks} downloaded chunks; left out: "
        f"{selection.not_downloaded} index clips in chunks not downloaded, "
        f"{len(selection.invalid)} invalid (clip_is_valid false), "
        f"{len(selection.unavailable)} without the {dataset.camera} camera or egomotion"
    )
    return selection


def _task(args_tuple: tuple) -> dict:
    return segment_clip_task(*args_tuple)


def run_local(tasks: list[tuple], workers: int) -> Iterator[dict]:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_task, tasks)


def check_reachable(address: str) -> None:
    """A head node at host:port must answer within seconds: Ray itself would retry for minutes
    before saying it cannot join."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address in ("local", "auto") or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UserError(
            f"--ray {address}: cannot join Ray, nothing answers there ({err.strerror or err}); "
            "start it with `ray start --head` on that node, or pass the address it printed"
        ) from None


def run_on_ray(tasks: list[tuple], address: str) -> Iterator[dict]:
    """Each clip a Ray task (one CPU); results as they finish. Ray tasks rather than Ray Data:
    clips are independent files whose outputs are written by the task itself, so a task per
    clip is the whole plan, and finished clips are what --resume keeps."""
    # Started under `uv run` (as `make test` does), Ray would start its workers through
    # `uv run` too, which needs uv on every node's PATH; they use this interpreter instead.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: uv sync --extra ray (or pip install ray)") from None
    try:
        ray.init(address=None if address == "local" else address, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"--ray {address}: cannot join Ray ({str(err).splitlines()[0]})") from None
    try:
        remote = ray.remote(num_cpus=1)(segment_clip_task)
        pending = [remote.remote(*task) for task in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        ray.shutdown()


STAGING_SETTINGS = "settings.json"  # in a run's staging folder: what its clips were cut with


def staging_for(output: Path, args: argparse.Namespace) -> Path:
    """The run's staging folder: a hidden sibling of the output, kept by --resume, which must
    cut the rest of the clips as the first part was cut (UserError naming what differs)."""
    staging = output.parent / f".{output.name}.partial"
    settings = {
        "data_dir": str(Path(args.data_dir).resolve()),
        "camera": args.cameras[0],
        "max_width": args.max_width,
    }
    if len(args.cameras) > 1:
        settings["side_cameras"] = args.cameras[1:]
        settings["side_max_width"] = args.side_max_width
        settings["allow_missing_cameras"] = args.allow_missing_cameras
    if staging.exists() and args.resume:
        try:
            before = json.loads((staging / STAGING_SETTINGS).read_text())
        except (OSError, ValueError):
            before = None
        if before is None:
            raise UserError(
                f"{staging}: an interrupted run that records no settings; its clips cannot be "
                "resumed safely (run again without --resume)"
            )
        differing = [
            f"{name} {before.get(name)} (now {settings.get(name)})"
            for name in {**before, **settings}
            if before.get(name) != settings.get(name)
        ]
        if differing:
            raise UserError(
                f"--resume: the interrupted run in {staging} cut its clips with "
                f"{', '.join(differing)}; resume with the same settings, or run again without "
                "--resume"
            )
    elif staging.exists():
        print(f"note: discarding an interrupted run's work in {staging} (--resume keeps it)")
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_text(staging / STAGING_SETTINGS, json.dumps(settings, indent=2) + "\n")
    return staging


def segment_all(
    dataset: RawDataset, selection: ClipSelection, args: argparse.Namespace, staging: Path
) -> list[dict]:
    """Every clip's record: those finished before (--resume) and those segmented now."""
    records = finished_clips(staging)
    todo = [(c, int(k)) for c, k in selection.clips["chunk"].items() if c not in records]
    if records:
        print(f"resuming: {len(records)} clips already segmented, {len(todo)} to go")
    for clip_id, _ in todo:  # a clip without its record was cut off midway: redo it whole
        shutil.rmtree(staging / "videos" / clip_id, ignore_errors=True)
    tasks = [
        (str(dataset.root), tuple(args.cameras), clip_id, chunk, str(staging), args.cut)
        for clip_id, chunk in todo
    ]
    results = run_on_ray(tasks, args.ray) if args.ray else run_local(tasks, args.workers)
    for record in tqdm(results, total=len(tasks), desc="segmenting clips", unit="clip"):
        records[record["clip_id"]] = record
        if "skipped" in record:
            tqdm.write(f"skipped clip {record['clip_id']}: {record['skipped']}", file=sys.stderr)
    return [records[c] for c in selection.clips.index if c in records]


def write_outputs(records: list[dict], selection: ClipSelection, args, staging: Path) -> dict:
    """manifest.parquet, calibration.parquet, skipped.json, dropped_segments.json, summary.json
    and source.json."""
    skipped = dict(selection.unavailable)
    skipped.update({r["clip_id"]: r["skipped"] for r in records if "skipped" in r})
    dropped = {k: v for r in records for k, v in r.get("dropped", {}).items()}
    rows = [
        {**row, "split": selection.clips.at[r["clip_id"], "split"]}
        for r in records
        for row in r.get("rows", [])
    ]
    if not rows:
        raise UserError(f"{args.data_dir}: no clip produced a segment ({len(skipped)} skipped)")
    manifest = pd.DataFrame(rows).sort_values(["clip_id", "segment_index"], ignore_index=True)
    manifest.to_parquet(staging / MANIFEST, index=False, row_group_size=MANIFEST_ROW_GROUP)
    calibration = pd.DataFrame(
        [(r["clip_id"], r.get("calibration", "")) for r in records if "rows" in r],
        columns=["clip_id", "calibration"],
    ).sort_values("clip_id", ignore_index=True)
    calibration.to_parquet(staging / CALIBRATION, index=False)
    summary = {
        "clips_segmented": int(manifest["clip_id"].nunique()),
        "segments": len(manifest),
        "clips_skipped": len(skipped),
        "segments_dropped": len(dropped),
        "clips_invalid": len(selection.invalid),
        "clips_in_chunks_not_downloaded": selection.not_downloaded,
        "clips_without_calibration": int((calibration["calibration"] == "").sum()),
        "why_without_calibration": dict(
            Counter(r["no_calibration"] for r in records if "no_calibration" in r)
        ),
    }
    if len(args.cameras) > 1:
        summary["clips_with_fewer_cameras"] = sum("missing_cameras" in r for r in records)
        summary["why_fewer_cameras"] = dict(
            Counter(why for r in records for why in r.get("missing_cameras", {}).values())
        )
    source = {
        "data_dir": str(Path(args.data_dir).resolve()),
        "camera": args.cameras[0],
        "cameras": args.cameras,
    }
    for name, content in (
        ("skipped.json", skipped),
        ("dropped_segments.json", dropped),
        ("summary.json", summary),
        (RAW_SOURCE, source),
    ):
        atomic_write_text(staging / name, json.dumps(content, indent=2, sort_keys=True) + "\n")
    return summary


def run(args: argparse.Namespace) -> int:
    check_apart(args.output_dir, {"--data-dir": args.data_dir})
    if args.ray:
        check_reachable(args.ray)
    dataset = RawDataset(Path(args.data_dir), args.cameras[0], tuple(args.cameras[1:]))
    selection = select(dataset)
    output = check_output_dir(args.output_dir, args.overwrite_output)
    writable_parent(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_for(output, args)
    records = segment_all(dataset, selection, args, staging)
    try:
        summary = write_outputs(records, selection, args, staging)
    except UserError:  # nothing to keep: no clip gave a segment
        shutil.rmtree(staging)
        raise
    shutil.rmtree(staging / CLIP_RESULTS)
    (staging / STAGING_SETTINGS).unlink()
    mark_output(staging, "prepare_video_segments.py")
    replace_path(staging, output)
    print(
        f"{summary['clips_segmented']} clips -> {summary['segments']} segments in "
        f"{args.output_dir} ({summary['clips_skipped']} clips skipped, "
        f"{summary['segments_dropped']} segments dropped, {summary['clips_invalid']} invalid "
        f"clips and {summary['clips_in_chunks_not_downloaded']} clips of chunks not "
        "downloaded left out)"
    )
    if summary["clips_without_calibration"]:
        print(
            f"{summary['clips_without_calibration']} clips have no calibration: they train, "
            "but their paths are not drawn on the camera image (download_dataset.py fetches it)"
        )
        for why, count in sorted(summary["why_without_calibration"].items()):
            print(f"  {count} clips: {why}")
    if summary.get("clips_with_fewer_cameras"):
        print(f"{summary['clips_with_fewer_cameras']} clips kept with fewer cameras:")
        for why, count in sorted(summary["why_fewer_cameras"].items()):
            print(f"  {count} clips: {why}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
