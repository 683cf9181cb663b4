#!/usr/bin/env python
"""Predict the next second's 30 (velocity m/s, curvature 1/m) pairs for driving clips.

Any mp4 works: a clip that is not 30 frames over 1 s is resampled to 30 frames spread evenly
over its last second (or over all of it when shorter). A clip that cannot be decoded is named
with its cause and the others are still predicted; the exit status is then non-zero. Runs on
the GPU when there is one (--device to choose). A model trained with ego history in its prompt
needs each clip's (--ego-history); it is asked exactly as in training. With --render DIR, each
clip's last frame is written as a PNG with the predicted path drawn on it through the camera's
calibration: a prepared segment's own (calibration.parquet of its segments folder), or the
dataset's for a clip id (--calibration DATA_DIR:CLIP_ID). A model trained on several cameras
takes VIDEO as its first camera's clip and each other camera's clip of the same moment with
--camera NAME=PATH (its last second at its own rate, as its segments hold it); the path is
drawn on VIDEO.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qwenvl.cli import UserError, add_generation_arguments, add_inference_arguments, run_script
from qwenvl.files import check_apart, check_apart_from_files, file_folders, writable_parent


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
    parser.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="clips per generation batch (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per clip")
    parser.add_argument(
        "--render",
        metavar="DIR",
        help="write each clip's last frame with the predicted path drawn on it as DIR/<clip>.png",
    )
    parser.add_argument(
        "--overwrite-output",
        action="store_true",
        help="with --render, replace PNGs of the same names already in DIR",
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
        "curvature) pairs, oldest first, once per VIDEO in their order: inline "
        "'[(12.3, 0.004), ...]', a JSON file of [[speed, curvature], ...] or of "
        '{"speed": [...], "curvature": [...]}, or a CSV file with columns speed and curvature',
    )
    parser.add_argument(
        "--camera",
        action="append",
        metavar="NAME=PATH",
        help="for a model trained on several cameras, the clip of each of its other cameras "
        "(NAME as the dataset spells it), once per camera per VIDEO in their order; VIDEO is "
        "its first camera's clip (the cameras are listed in the model's prompt.json)",
    )
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be positive")
    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    if args.calibration and not args.render:
        parser.error("--calibration is for --render")
    if args.calibration and len(args.calibration) not in (1, len(args.videos)):
        parser.error("--calibration: give it once, or once per VIDEO")
    return args


def dataset_calibration(spec: str) -> str:
    """A clip's calibration (JSON) from the downloaded dataset, DATA_DIR:CLIP_ID; empty where
    the dataset has none for it."""
    from qwenvl.prepare.rawdata import NoCalibration, RawDataset

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
    try:
        return json.dumps(dataset.calibration(clip_id, chunk))
    except NoCalibration:
        return ""


def calibrations(args: argparse.Namespace) -> list[str | None]:
    """Each clip's calibration for --render, read before any model loads (None: the segment's
    own, looked up when it is drawn)."""
    if not args.calibration:
        return [None] * len(args.videos)
    found = [dataset_calibration(spec) for spec in args.calibration]
    return found * len(args.videos) if len(found) == 1 else found


def check_render(args: argparse.Namespace, spec) -> None:
    """--render DIR: a folder apart from every input (the model, each clip's folder), and no
    PNG it would write already there unless --overwrite-output."""
    folder = Path(args.render)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--render {folder}: is a file, not a folder")
    check_apart(folder, spec.local_inputs())
    clips = [*args.videos, *(c.partition("=")[2] for c in args.camera or ())]
    check_apart_from_files(folder, "the clips", file_folders([str(Path(v)) for v in clips]))
    stems = [Path(v).stem for v in args.videos]
    if len(set(stems)) < len(stems):
        raise UserError("--render: two VIDEOs share a file name; their PNGs would collide")
    existing = [folder / f"{stem}.png" for stem in stems if (folder / f"{stem}.png").exists()]
    if existing and not args.overwrite_output:
        raise UserError(
            f"--render: {existing[0]} already exists ({len(existing)} of the PNGs would be "
            "replaced); pass --overwrite-output to replace them"
        )
    writable_parent(folder / "x.png")


def render(views, video: str, pairs, calibration: str | None, folder: Path):
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
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path, why


def camera_clips(args: argparse.Namespace, prompt) -> list[tuple[str, ...]]:
    """Each VIDEO's further clips, in the order of the model's cameras, read before any model
    loads; a camera missing, extra, or given too few or too many times is one line."""
    wanted = prompt.cameras[1:]
    given = args.camera or []
    if not prompt.cameras:
        if given:
            raise UserError(f"{args.model_path} takes one camera's clip per VIDEO: drop --camera")
        return [()] * len(args.videos)
    by_camera: dict[str, list[str]] = {name: [] for name in wanted}
    for spec in given:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--camera {spec}: expected NAME=PATH")
        if name == prompt.cameras[0]:
            raise UserError(
                f"--camera {spec}: {name} is the model's first camera, whose clip is VIDEO"
            )
        if name not in by_camera:
            raise UserError(
                f"--camera {spec}: {args.model_path} was not trained on {name} (its cameras: "
                f"{', '.join(prompt.cameras)})"
            )
        by_camera[name].append(path)
    for name, paths in by_camera.items():
        if len(paths) != len(args.videos):
            raise UserError(
                f"{args.model_path} was trained on the cameras {', '.join(prompt.cameras)}: "
                f"give each VIDEO's {name} clip with --camera {name}=PATH ({len(paths)} given "
                f"for {len(args.videos)} VIDEOs)"
            )
    return [tuple(by_camera[name][i] for name in wanted) for i in range(len(args.videos))]


def histories(args: argparse.Namespace, prompt) -> list[np.ndarray | None]:
    """Each clip's ego history as the model's prompt wants it, read before any model loads;
    a history missing, extra, or of the wrong length is one line."""
    wanted = prompt.history_pairs
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
    """(count, 2) pairs from inline text, or a JSON or CSV file, in the shapes --ego-history
    documents; anything else is one line."""
    from qwenvl.answer import AnswerParseError, parse_pairs

    path = Path(spec)
    shape = "[[speed, curvature], ...] pairs"
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
            pairs = np.array(data, dtype=np.float64)
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise ValueError(f"not a list of {shape} nor {{speed, curvature}} lists")
    except (AnswerParseError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--ego-history {spec}: {str(err).splitlines()[0]}") from None
    if pairs.shape != (count, 2) or not np.isfinite(pairs).all():
        raise UserError(f"--ego-history {spec}: {len(pairs)} finite pairs, expected {count}")
    return pairs


def result_of(video: str, text: str | None, error: str | None) -> dict:
    """One clip's result: pairs, or the decode or parse error, with the raw text."""
    from qwenvl.answer import AnswerParseError, parse_pairs

    if text is None:
        return {"video": video, "pairs": None, "error": error, "raw_text": None}
    try:
        return {"video": video, "pairs": parse_pairs(text), "error": None, "raw_text": text}
    except AnswerParseError as err:
        return {
            "video": video,
            "pairs": None,
            "error": f"answer not parsed ({err})",
            "raw_text": text,
        }


def predict_batch(backend, batch: list[tuple], args) -> list[dict]:
    """The results of a batch of (VIDEO, its history, its further cameras' clips): the clips
    that decode answered together."""
    from qwenvl.inference.backend import Request
    from qwenvl.inference.clips import ClipUnreadable, any_clip, any_view

    spec = backend.spec
    prompt = spec.user_prompt()
    requests, order, results = [], [], {}
    for number, (video, history, others) in enumerate(batch):
        views = []
        for view, path in enumerate((video, *others)):
            try:
                read = any_view if view else any_clip
                views.append(read(path, spec.video.for_view(view)))
            except ClipUnreadable as err:
                results[number] = result_of(video, None, f"{path}: {err}" if view else str(err))
                break
        if number in results:
            continue
        requests.append(
            Request(tuple(views), prompt.human(prompt.user_text(history, spec.answer_format)))
        )
        order.append(number)
    if requests:
        answers = backend.answer(requests, args.constrained, args.max_new_tokens)
        for number, answer in zip(order, answers, strict=True):
            results[number] = result_of(batch[number][0], answer.text, None)
    return [results[number] for number in range(len(batch))]


def run(args: argparse.Namespace) -> int:
    from qwenvl.inference.opener import open_for_script
    from qwenvl.inference.spec import read_spec

    try:
        spec = read_spec(args.model_path, args.base_model)
    except ValueError as err:
        raise UserError(str(err)) from None
    per_clip = histories(args, spec.user_prompt())
    others = camera_clips(args, spec.user_prompt())
    if args.render:
        check_render(args, spec)
    clip_calibrations = calibrations(args)
    backend = open_for_script(args, spec)
    print(f"{args.model_path}: {backend.describe()}", file=sys.stderr)
    if args.render:
        from qwenvl.evaluate.gallery import Views

        Path(args.render).mkdir(parents=True, exist_ok=True)
        views = Views()  # each segments folder's calibration.parquet read once
    failed = 0
    clips = list(zip(args.videos, per_clip, others, clip_calibrations, strict=True))
    with tqdm(total=len(clips), desc="predicting", unit="clip", disable=len(clips) < 2) as bar:
        for start in range(0, len(clips), args.batch_size):
            batch = clips[start : start + args.batch_size]
            results = predict_batch(backend, [(v, h, o) for v, h, o, _ in batch], args)
            for (video, _, _, calibration), result in zip(batch, results, strict=True):
                failed += result["error"] is not None
                if args.render and result["error"] is None:
                    image, why = render(
                        views, video, result["pairs"], calibration, Path(args.render)
                    )
                    result["render"] = str(image)
                    if why:
                        tqdm.write(f"{video}: drawn without its path: {why}", file=sys.stderr)
                report(result, args.json, spec.answer_format)
            bar.update(len(batch))
    backend.close()
    if failed:
        print(f"{failed} of {len(args.videos)} clips failed", file=sys.stderr)
    return 1 if failed else 0


def report(result: dict, as_json: bool, answer_format) -> None:
    """One clip's line (tqdm.write keeps each line whole beside the progress bar)."""
    if as_json:
        tqdm.write(json.dumps(result), file=sys.stdout)
    elif result["error"] is not None:
        tqdm.write(f"error: {result['video']}: {result['error']}", file=sys.stderr)
    else:
        tqdm.write(f"{result['video']}: {answer_format.format(result['pairs'])}", file=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
