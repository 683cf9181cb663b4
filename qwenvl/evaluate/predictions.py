"""Answer test samples with a model, each rank its share of them, and gather the prediction
records on every rank in the test file's order, so any number of GPUs gives one process's
predictions.jsonl. A sample that cannot be answered (its video missing or undecodable, its
labels absent) is named and counted, and every other one is still scored."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm import tqdm

from qwenvl import record
from qwenvl.answer import AnswerParseError, parse_pairs
from qwenvl.chat import user_text_of
from qwenvl.distributed import gather_in_order, share
from qwenvl.inference.generate import ClipUnreadable, clip_of, generate_answers
from qwenvl.inference.load import LoadedModel


def prediction_record(sample: dict, text: str) -> dict:
    """One predictions.jsonl line: raw text, parsed pairs or the reason parsing failed, truth."""
    try:
        pairs, error = parse_pairs(text), None
    except AnswerParseError as err:
        pairs, error = None, str(err)
    return {
        "id": sample["id"],
        "clip_id": sample.get("clip_id", ""),
        "video": sample["video"],
        "raw_text": text,
        "pairs": pairs,
        "parse_error": error,
        "true_pairs": record.pairs(sample, "future").tolist(),
        "observed_pairs": record.pairs(sample, "observed").tolist(),
    }


def scoring_problem(sample: dict) -> str | None:
    """Why a sample cannot be scored from its own fields (labels, prompt), or None."""
    missing = [f.name for f in record.LABELS if len(sample.get(f.name) or ()) != 30]
    if missing:
        return f"no 30 values of {', '.join(missing)}"
    try:
        user_text_of(sample)
    except (KeyError, IndexError, TypeError, AttributeError):
        return "no human/gpt conversation"
    return None


def predict_samples(
    loaded: LoadedModel,
    samples,
    rank: int,
    world: int,
    batch_size: int,
    max_new_tokens: int | None = None,
    constrained: bool = True,
) -> tuple[list[dict], dict[str, str]]:
    """(prediction records of every sample that could be answered, in order, and the others:
    id -> why), on every rank; this rank answers its share (every world-th sample) in batches,
    with a progress bar on rank 0."""
    mine = share(samples, rank, world)
    answered, unscored = [], []
    with tqdm(total=len(mine), desc="generating", unit="clip", disable=rank != 0) as bar:
        for start in range(0, len(mine), batch_size):
            ready, clips = [], []
            for index, sample in mine[start : start + batch_size]:
                try:
                    problem = scoring_problem(sample)
                    if problem:
                        raise ClipUnreadable(problem)
                    clips.append(clip_of(sample, loaded.settings))
                    ready.append((index, sample))
                except ClipUnreadable as err:
                    unscored.append((index, (sample.get("id", f"sample {index}"), str(err))))
            if ready:
                texts = generate_answers(
                    loaded,
                    clips,
                    [user_text_of(sample) for _, sample in ready],
                    max_new_tokens=max_new_tokens,
                    constrained=constrained,
                )
                for (index, sample), text in zip(ready, texts, strict=True):
                    answered.append((index, prediction_record(sample, text)))
            bar.update(len(mine[start : start + batch_size]))
    return gather_in_order(answered, world), dict(gather_in_order(unscored, world))


def test_set(path: str | Path, samples) -> dict:
    """Which samples an evaluation is of: the test file, their number and a hash of their ids
    in order, so evaluations of different test sets are never compared."""
    digest = hashlib.sha256()
    for sample_id in samples.column("id", fill=None):
        digest.update(f"{sample_id}\n".encode())
    return {
        "path": str(Path(path).resolve()),
        "samples": len(samples),
        "ids_sha256": digest.hexdigest(),
    }


def write_predictions(records: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
