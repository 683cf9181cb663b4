#!/usr/bin/env python
"""Download chunks of NVIDIA's PhysicalAI Autonomous Vehicles dataset with NVIDIA's devkit.

Fetches the front camera (or --cameras), the egomotion and the calibration (camera intrinsics,
sensor extrinsics, vehicle dimensions: small files; --no-calibration to skip) of the given
chunks, plus features.csv, clip_index.parquet and the metadata, under the dataset's own paths
(`physical_ai_av`'s PhysicalAIAVDatasetInterface does the work). The dataset revision is
pinned: the commit resolved by the first download is recorded in dataset_revision.json and
later downloads into the same folder keep to it, so chunks added later match the first ones
(--revision to choose another). Resumable: complete files are skipped.
The dataset is gated: accept its licence on the hub and log in (`hf auth login` or HF_TOKEN).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from qwenvl.cli import UserError, run_script
from qwenvl.files import atomic_write_text
from qwenvl.prepare.rawdata import CALIBRATION_FEATURES, DEFAULT_CAMERA, EGOMOTION, HF_REPO_ID

REVISION_FILE = "dataset_revision.json"

# Fail fast instead of hanging when the hub is unreachable.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", nargs="+", required=True, help="chunk numbers, e.g. 0000 0001")
    parser.add_argument(
        "--cameras",
        nargs="+",
        default=[DEFAULT_CAMERA],
        help="cameras to fetch (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fetch the calibration (camera intrinsics, extrinsics, vehicle dimensions), which "
        "the path overlays on the camera image need (default: on; --no-calibration skips it)",
    )
    parser.add_argument(
        "--output-dir",
        default="physical_ai_data",
        help="dataset root to write (default: %(default)s)",
    )
    parser.add_argument(
        "--revision",
        help=f"dataset branch, tag or commit (default: the one in {REVISION_FILE}, else the "
        "newest)",
    )
    parser.add_argument(
        "--repo-id", default=HF_REPO_ID, help="dataset repository (default: %(default)s)"
    )
    parser.add_argument(
        "--max-workers", type=int, default=8, help="parallel downloads (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    for chunk in args.chunks:
        if not re.fullmatch(r"\d{1,4}", chunk):
            parser.error(f"--chunks: '{chunk}' is not a chunk number like 0000")
    return args


def recorded_revision(output_dir: Path) -> str | None:
    path = output_dir / REVISION_FILE
    return json.loads(path.read_text())["revision"] if path.is_file() else None


def open_dataset(args: argparse.Namespace, revision: str | None):
    """The devkit's view of the dataset at `revision` (None: newest); it downloads
    features.csv, clip_index.parquet and metadata/ into the output folder."""
    from physical_ai_av import PhysicalAIAVDatasetInterface

    return PhysicalAIAVDatasetInterface(
        revision,
        repo_id=args.repo_id,
        local_dir=args.output_dir,
        # Never an interactive prompt: the size is printed before the download instead.
        confirm_download_threshold_gb=float("inf"),
    )


def wanted_features(dataset, args: argparse.Namespace) -> list[str]:
    """Feature names to fetch, checked against the dataset's features.csv."""
    cameras = dataset.features.CAMERA.ALL
    unknown = [c for c in args.cameras if c not in cameras]
    if unknown:
        known = ", ".join(sorted(cameras))
        raise UserError(f"unknown camera {unknown[0]}; the dataset has: {known}")
    features = [*args.cameras, EGOMOTION]
    if args.calibration:
        features += [f for f in CALIBRATION_FEATURES if f in dataset.features.ALL]
    return features


def chunk_files(dataset, chunks: list[int], features: list[str]) -> list[str]:
    """Repository paths of those chunks' files, as the devkit's templates name them (a feature
    the presence table marks absent for a chunk has no file)."""
    known = set(dataset.clip_index["chunk"].unique().tolist())
    unknown = [c for c in chunks if c not in known]
    if unknown:
        raise UserError(f"unknown chunk {unknown[0]:04d}; the dataset has chunks 0..{max(known)}")
    presence = dataset.chunk_feature_presence
    return [
        dataset.features.get_chunk_feature_filename(chunk, feature)
        for chunk in chunks
        for feature in features
        if feature not in presence.columns or presence.at[chunk, feature]
    ]


def download(args: argparse.Namespace) -> tuple[str, list[str]]:
    """Resolve the revision, fetch the chunks; (commit, files)."""
    output_dir = Path(args.output_dir)
    pinned = recorded_revision(output_dir)
    dataset = open_dataset(args, args.revision or pinned)
    if pinned and dataset.revision != pinned:
        print(
            f"note: {output_dir} held revision {pinned}; now {dataset.revision} "
            "(chunks downloaded before keep the old one)",
            file=sys.stderr,
        )
    record = {"repo_id": args.repo_id, "revision": dataset.revision}
    atomic_write_text(output_dir / REVISION_FILE, json.dumps(record, indent=2) + "\n")
    chunks = sorted({int(c) for c in args.chunks})
    features = wanted_features(dataset, args)
    files = chunk_files(dataset, chunks, features)
    sizes = dataset.api.get_paths_info(paths=files, **dataset.repo_snapshot_info)
    total = sum(info.size for info in sizes)
    print(
        f"{args.repo_id}@{dataset.revision[:12]}: {len(files)} files of chunks "
        f"{', '.join(f'{c:04d}' for c in chunks)}, {total / 1024**3:.2f} GB",
        flush=True,
    )
    dataset.download_chunk_features(chunks, features, max_workers=args.max_workers)
    return dataset.revision, files


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        raise UserError(f"{args.repo_id}: the Hugging Face hub is set offline (HF_HUB_OFFLINE)")
    if get_token() is None:
        raise UserError(
            f"{args.repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN"
        )
    try:
        revision, files = download(args)
    except GatedRepoError:
        raise UserError(
            f"{args.repo_id}: access denied; accept the dataset licence on the hub"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"{args.repo_id}: no revision '{args.revision}'") from None
    except RepositoryNotFoundError:
        raise UserError(f"{args.repo_id}: repository not found (or no access)") from None
    except (UserError, KeyboardInterrupt):
        raise
    except OfflineModeIsEnabled as err:
        raise UserError(f"{args.repo_id}: offline ({err})") from None
    except Exception as err:  # network and hub failures come in many types; one line each
        cause = f"{type(err).__name__}: {str(err).splitlines()[0]}" if str(err) else repr(err)
        raise UserError(f"{args.repo_id}: download failed ({cause})") from None
    print(f"{len(files)} files at revision {revision} are complete in {args.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
