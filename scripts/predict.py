#!/usr/bin/env python
"""Predict the next second's 30 (velocity m/s, curvature 1/m) pairs for driving clips.

Any mp4 works: a clip that is not 30 frames over 1 s is resampled to 30 frames spread evenly
over its last second (or over all of it when shorter).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from qwenvl.cli import UserError, main_guard


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="mp4 files")
    parser.add_argument(
        "--model-path", required=True, help="fine-tuned model, LoRA adapter, or base model"
    )
    parser.add_argument(
        "--base-model",
        help="base model of a LoRA adapter (default: the one recorded in the adapter)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per clip")
    return parser.parse_args(argv)


def to_one_second(frames: np.ndarray, fps: float, count: int = 30) -> tuple[np.ndarray, float]:
    """The last second of a clip as exactly `count` frames, and the fps that makes them 1 s."""
    if len(frames) == count and abs(fps - count) < 0.5:
        return frames, fps
    last_second = frames[-max(1, int(round(fps))) :]
    indices = np.linspace(0, len(last_second) - 1, count).round().astype(int)
    return last_second[indices], float(count)


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for video in args.videos:
        if not Path(video).is_file():
            raise UserError(f"{video}: not found")
    from qwenvl.answer import AnswerParseError, parse_pairs
    from qwenvl.inference import generate_answers, load_for_inference
    from qwenvl.video import decode_video

    try:
        loaded = load_for_inference(args.model_path, args.base_model)
    except OSError as err:
        raise UserError(f"{args.model_path}: cannot load ({str(err).splitlines()[0]})") from None
    failed = 0
    for video in args.videos:
        try:
            frames, fps = decode_video(video, loaded.settings)
        except (OSError, ValueError) as err:
            raise UserError(f"{video}: cannot decode ({err})") from None
        text = generate_answers(loaded, [to_one_second(frames, fps)])[0]
        try:
            pairs, error = parse_pairs(text), None
        except AnswerParseError as err:
            pairs, error, failed = None, str(err), failed + 1
        if args.json:
            print(
                json.dumps({"video": video, "pairs": pairs, "parse_error": error, "raw_text": text})
            )
        elif pairs is None:
            print(f"{video}: answer not parsed ({error}): {text!r}")
        else:
            print(f"{video}: " + ", ".join(f"({v:.1f}, {c:.3f})" for v, c in pairs))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
