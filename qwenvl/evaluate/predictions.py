"""Answer test samples with a model, each rank its share of them, and build the prediction
records (predictions.jsonl) in the test file's order, so any number of GPUs gives one process's
predictions. A sample that cannot be answered (its video missing or undecodable, its labels
absent) is named and counted, and every other one is still scored."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qwenvl import record
from qwenvl.answer import AnswerParseError, parse_pairs
from qwenvl.inference.answering import answer_samples
from qwenvl.inference.backend import Backend
from qwenvl.metrics import scoring_problem


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


def predict_samples(
    backend: Backend,
    samples,
    rank: int,
    world: int,
    batch_size: int,
    max_new_tokens: int | None = None,
    constrained: bool = True,
) -> tuple[list[dict], dict[str, str]]:
    """(prediction records of every sample that could be answered, in order, and the others:
    id -> why), on every rank."""
    done = answer_samples(
        backend, samples, rank, world, batch_size, constrained, max_new_tokens, scoring_problem
    )
    records = [prediction_record(samples[index], answer.text) for index, answer in done.answers]
    return records, dict(why for _, why in done.unanswered)


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
