#!/usr/bin/env python
"""Predict the next second's 30 (velocity m/s, curvature 1/m) pairs for driving clips.

Any mp4 works: a clip that is not 30 frames over 1 s is resampled to 30 frames spread evenly
over its last second (or over all of it when shorter). A clip that cannot be decoded is named
with its cause and the others are still predicted; the exit status is then non-zero. Runs on
the GPU when there is one (--device to choose).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qwenvl.cli import add_generation_arguments, add_inference_arguments, run_script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="mp4 files")
    parser.add_argument(
        "--model-path", required=True, help="fine-tuned model, LoRA adapter, or base model"
    )
    add_inference_arguments(parser)
    add_generation_arguments(
        parser, "free decoding instead of constraining the answer to the answer grammar"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per clip")
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be positive")
    return args


def to_one_second(frames: np.ndarray, fps: float, count: int = 30) -> tuple[np.ndarray, float]:
    """The last second of a clip as exactly `count` frames, and the fps that makes them 1 s."""
    if len(frames) == count and abs(fps - count) < 0.5:
        return frames, fps
    last_second = frames[-max(1, int(round(fps))) :]
    indices = np.linspace(0, len(last_second) - 1, count).round().astype(int)
    return last_second[indices], float(count)


def read_clip(video: str, settings) -> tuple[tuple[np.ndarray, float] | None, str | None]:
    """(the clip as 30 frames over 1 s, None), or (None, why it cannot be read)."""
    from qwenvl.video import decode_video

    if not Path(video).is_file():
        return None, "not found"
    try:
        return to_one_second(*decode_video(video, settings)), None
    except Exception as err:  # PyAV raises many kinds (InvalidDataError, EOFError, ...)
        # PyAV's message repeats the path; its strerror is the cause alone.
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0] or type(err).__name__
        return None, f"cannot decode ({reason})"


def predict_one(loaded, video: str, args: argparse.Namespace) -> dict:
    """One clip's result: pairs, or the decode or parse error, with the raw text."""
    from qwenvl.answer import AnswerParseError, parse_pairs
    from qwenvl.inference.generate import generate_answers

    clip, error = read_clip(video, loaded.settings)
    if clip is None:
        return {"video": video, "pairs": None, "error": error, "raw_text": None}
    text = generate_answers(
        loaded,
        [clip],
        [loaded.user_prompt().user_text()],
        max_new_tokens=args.max_new_tokens,
        constrained=args.constrained,
    )[0]
    try:
        return {"video": video, "pairs": parse_pairs(text), "error": None, "raw_text": text}
    except AnswerParseError as err:
        return {
            "video": video,
            "pairs": None,
            "error": f"answer not parsed ({err})",
            "raw_text": text,
        }


def run(args: argparse.Namespace) -> int:
    from qwenvl.inference.load import load_for_script

    loaded = load_for_script(args, args.model_path)
    print(f"{args.model_path}: {loaded.describe()}", file=sys.stderr)
    fmt = loaded.answer_format
    failed = 0
    for video in tqdm(args.videos, desc="predicting", unit="clip", disable=len(args.videos) < 2):
        result = predict_one(loaded, video, args)
        failed += result["error"] is not None
        # tqdm.write keeps each line whole beside the progress bar.
        if args.json:
            tqdm.write(json.dumps(result), file=sys.stdout)
        elif result["error"] is not None:
            tqdm.write(f"error: {video}: {result['error']}", file=sys.stderr)
        else:
            tqdm.write(f"{video}: {fmt.format(result['pairs'])}", file=sys.stdout)
    if failed:
        print(f"{failed} of {len(args.videos)} clips failed", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
