#!/usr/bin/env python
"""Predict the next second's 30 (velocity m/s, curvature 1/m) pairs for driving clips.

Any mp4 works: a clip that is not 30 frames over 1 s is resampled to 30 frames spread evenly
over its last second (or over all of it when shorter). A clip that cannot be decoded is named
with its cause and the others are still predicted; the exit status is then non-zero. Runs on
the GPU when there is one (--device to choose). A model trained with ego history in its prompt
needs each clip's (--ego-history); it is asked exactly as in training. With --render DIR, each
clip's last frame is written as a PNG with the predicted path drawn on it through the camera's
calibration: a prepared segment's own (calibration.parquet of its segments folder), or the
dataset's for a clip id (--calibration DATA_DIR:CLIP_ID).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qwenvl.cli import UserError, add_generation_arguments, add_inference_arguments, run_script
from qwenvl.files import check_apart


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
    parser.add_argument(
        "--render",
        metavar="DIR",
        help="write each clip's last frame with the predicted path drawn on it as DIR/<clip>.png",
    )
    parser.add_argument(
        "--calibration",
        action="append",
        metavar="DATA_DIR:CLIP_ID",
        help="with --render, the camera calibration of that clip of the downloaded dataset "
        "(once for all VIDEOs, or once per VIDEO in their order); default: a prepared segment's "
        "own",
    )
    parser.add_argument(
        "--ego-history",
        action="append",
        metavar="PAIRS_OR_FILE",
        help="for a model trained with ego history in its prompt, each clip's past (speed, "
        "curvature), oldest first: inline '[(12.3, 0.004), ...]', or a JSON file ([[v, c], ...] "
        'or {"speed": [...], "curvature": [...]}) or a CSV file (columns speed, curvature); '
        "once per VIDEO, in their order",
    )
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be positive")
    if args.calibration and not args.render:
        parser.error("--calibration is for --render")
    if args.calibration and len(args.calibration) not in (1, len(args.videos)):
        parser.error("--calibration: give it once, or once per VIDEO")
    return args


def dataset_calibration(spec: str) -> str:
    """A clip's calibration (JSON) from the downloaded dataset, DATA_DIR:CLIP_ID; empty where
    the dataset has none for it."""
    from qwenvl.prepare.rawdata import RawDataset

    root, sep, clip_id = spec.rpartition(":")
    if not sep or not root or not clip_id:
        raise UserError(f"--calibration {spec}: expected DATA_DIR:CLIP_ID")
    dataset = RawDataset(Path(root))
    try:
        chunk = int(dataset.clip_index.at[clip_id, "chunk"])
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"--calibration {spec}: {str(err).splitlines()[0]}") from None
    except KeyError:
        raise UserError(f"--calibration {spec}: {clip_id} is not in {root}'s clip index") from None
    found = dataset.calibration(clip_id, chunk)
    return json.dumps(found) if found else ""


def calibrations(args: argparse.Namespace) -> list[str | None]:
    """Each clip's calibration for --render, read before any model loads (None: the segment's
    own, looked up when it is drawn)."""
    if not args.calibration:
        return [None] * len(args.videos)
    found = [dataset_calibration(spec) for spec in args.calibration]
    return found * len(args.videos) if len(found) == 1 else found


def render(
    views, video: str, pairs, calibration: str | None, folder: Path
) -> tuple[Path, str | None]:
    """Draw the predicted path on the clip's last frame (through the calibration given, else
    its segments folder's); (the PNG, why it has no overlay)."""
    from qwenvl.evaluate import overlay
    from qwenvl.evaluate.gallery import draw_clip

    paths = [("predicted", pairs, overlay.PREDICTED_COLOUR)] if pairs is not None else []
    clip_id = Path(video).parent.name  # a prepared segment's: videos/<clip_id>/<segment>.mp4
    # Each VIDEO is its own clip here: a given calibration is one VIDEO's, not its folder's.
    key = video if calibration is not None else clip_id
    image, why = draw_clip(views, video, key, paths, Path(video).name, calibration)
    path = folder / f"{Path(video).stem}.png"
    image.save(path)
    return path, why


def to_one_second(frames: np.ndarray, fps: float, count: int = 30) -> tuple[np.ndarray, float]:
    """The last second of a clip as exactly `count` frames, and the fps that makes them 1 s."""
    if len(frames) == count and abs(fps - count) < 0.5:
        return frames, fps
    last_second = frames[-max(1, int(round(fps))) :]
    indices = np.linspace(0, len(last_second) - 1, count).round().astype(int)
    return last_second[indices], float(count)


def stored_prompt(model_path: str):
    """The prompt stored with a local model (None for a hub id or a model without one)."""
    from qwenvl.chat import PromptSettings

    path = Path(model_path)
    try:
        return PromptSettings.load(path) if path.is_dir() else None
    except ValueError as err:
        raise UserError(str(err)) from None


def histories(args: argparse.Namespace, prompt) -> list[np.ndarray | None]:
    """Each clip's ego history as the model's prompt wants it, read before any model loads;
    a history missing, extra, or of the wrong length is one line."""
    wanted = prompt.history_pairs if prompt is not None else 0
    given = args.ego_history or []
    if not wanted:
        if given:
            raise UserError(
                f"{args.model_path} was trained without ego history: drop --ego-history"
            )
        return [None] * len(args.videos)
    if len(given) != len(args.videos):
        raise UserError(
            f"{args.model_path} was trained with {prompt.ego_history_seconds:g} s of ego history "
            f"at {prompt.history_hz:g} Hz in its prompt: give each clip's {wanted} (speed, "
            f"curvature) pairs with --ego-history, once per VIDEO ({len(given)} given for "
            f"{len(args.videos)})"
        )
    return [read_history(spec, wanted) for spec in given]


def read_history(spec: str, count: int) -> np.ndarray:
    """(count, 2) pairs from inline text or a JSON or CSV file."""
    from qwenvl.answer import AnswerParseError, parse_pairs

    path = Path(spec)
    try:
        if spec.lstrip().startswith("["):
            return np.array(parse_pairs(spec, expected=count))
        if not path.is_file():
            raise ValueError("neither inline pairs nor a file")
        if path.suffix.lower() == ".csv":
            import pandas as pd

            table = pd.read_csv(path)
            pairs = table[["speed", "curvature"]].to_numpy(dtype=np.float64)
        else:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data = list(zip(data["speed"], data["curvature"], strict=True))
            pairs = np.array(data, dtype=np.float64).reshape(-1, 2)
    except (AnswerParseError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--ego-history {spec}: {str(err).splitlines()[0]}") from None
    if pairs.shape != (count, 2) or not np.isfinite(pairs).all():
        raise UserError(f"--ego-history {spec}: {len(pairs)} finite pairs, expected {count}")
    return pairs


def read_clip(video: str, settings) -> tuple[tuple[np.ndarray, float] | None, str | None]:
    """(the clip as 30 frames over 1 s, None), or (None, why it cannot be read)."""
    from qwenvl.inference.generate import decode_problem
    from qwenvl.video import decode_video

    if not Path(video).is_file():
        return None, "not found"
    try:
        return to_one_second(*decode_video(video, settings)), None
    except Exception as err:  # PyAV raises many kinds (InvalidDataError, EOFError, ...)
        return None, f"cannot decode ({decode_problem(err)})"


def predict_one(loaded, video: str, history, args: argparse.Namespace) -> dict:
    """One clip's result: pairs, or the decode or parse error, with the raw text."""
    from qwenvl.answer import AnswerParseError, parse_pairs
    from qwenvl.inference.generate import generate_answers

    clip, error = read_clip(video, loaded.settings)
    if clip is None:
        return {"video": video, "pairs": None, "error": error, "raw_text": None}
    text = generate_answers(
        loaded,
        [clip],
        [loaded.user_prompt().user_text(history, loaded.answer_format)],
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

    per_clip = histories(args, stored_prompt(args.model_path))
    if args.render:
        check_apart(args.render, {"--model-path": args.model_path})
        stems = [Path(v).stem for v in args.videos]
        if len(set(stems)) < len(stems):
            raise UserError("--render: two VIDEOs share a file name; their PNGs would collide")
    clip_calibrations = calibrations(args)
    loaded = load_for_script(args, args.model_path)
    print(f"{args.model_path}: {loaded.describe()}", file=sys.stderr)
    fmt = loaded.answer_format
    failed = 0
    clips = tqdm(
        list(zip(args.videos, per_clip, clip_calibrations, strict=True)),
        desc="predicting",
        unit="clip",
        disable=len(args.videos) < 2,
    )
    if args.render:
        from qwenvl.evaluate.gallery import Views

        Path(args.render).mkdir(parents=True, exist_ok=True)
        views = Views()  # each segments folder's calibration.parquet read once
    for video, history, calibration in clips:
        result = predict_one(loaded, video, history, args)
        failed += result["error"] is not None
        if args.render and result["error"] is None:
            image, why = render(views, video, result["pairs"], calibration, Path(args.render))
            result["render"] = str(image)
            if why:
                tqdm.write(f"{video}: drawn without its path: {why}", file=sys.stderr)
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
