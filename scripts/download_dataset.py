#!/usr/bin/env python
"""Download chunks of NVIDIA's PhysicalAI Autonomous Vehicles dataset from the Hugging Face hub.

Fetches camera, egomotion, calibration and metadata files of the given chunks, keeping the
dataset's own paths. Resumable: files already complete are skipped, partial ones resumed.
The dataset is gated: accept its licence on the hub and log in (`hf auth login` or HF_TOKEN).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from qwenvl.cli import UserError, cli_main
from qwenvl.rawdata import DEFAULT_CAMERA, HF_REPO_ID, camera_zip, chunk_name, egomotion_zip

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
        "--output-dir",
        default="physical_ai_data",
        help="dataset root to write (default: %(default)s)",
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


def allow_patterns(chunks: list[int], cameras: list[str]) -> list[str]:
    """Repository paths (glob patterns) to fetch for these chunks and cameras."""
    patterns = ["metadata/*"]
    for chunk in chunks:
        patterns += [camera_zip(camera, chunk) for camera in cameras]
        patterns += [egomotion_zip(chunk), f"calibration/*{chunk_name(chunk)}*"]
    return patterns


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import constants, get_token, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise UserError(f"{args.repo_id}: the Hugging Face hub is set offline (HF_HUB_OFFLINE)")
    if get_token() is None:
        raise UserError(
            f"{args.repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN"
        )
    patterns = allow_patterns([int(c) for c in args.chunks], args.cameras)
    try:
        path = snapshot_download(
            repo_id=args.repo_id,
            repo_type="dataset",
            local_dir=args.output_dir,
            allow_patterns=patterns,
            max_workers=args.max_workers,
        )
    except GatedRepoError:
        raise UserError(
            f"{args.repo_id}: access denied; accept the dataset licence on the hub"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{args.repo_id}: download failed ({cause})") from None
    print(f"chunks {' '.join(args.chunks)} of {args.repo_id} are complete in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
