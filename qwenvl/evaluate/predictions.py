"""Answer test samples with a model, each rank its share of them, and gather the prediction
records on every rank in the test file's order, so any number of GPUs gives one process's
predictions.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from qwenvl import record
from qwenvl.answer import AnswerParseError, parse_pairs
from qwenvl.chat import user_text_of
from qwenvl.distributed import gather_in_order, share
from qwenvl.inference.generate import clips_of, generate_answers
from qwenvl.inference.load import LoadedModel


def prediction_record(sample: dict, text: str) -> dict:
    """One predictions.jsonl line: raw text, parsed pairs or the reason parsing failed, truth."""
    try:
        pairs, error = parse_pairs(text), None
    except AnswerParseError as err:
        pairs, error = None, str(err)
    return {
        "id": sample["id"],
        "video": sample["video"],
        "raw_text": text,
        "pairs": pairs,
        "parse_error": error,
        "true_pairs": record.pairs(sample, "future").tolist(),
        "observed_pairs": record.pairs(sample, "observed").tolist(),
    }


def predict_samples(
    loaded: LoadedModel,
    samples: list[dict],
    rank: int,
    world: int,
    batch_size: int,
    max_new_tokens: int | None = None,
    constrained: bool = True,
) -> list[dict]:
    """Prediction records of every sample, in order, on every rank; this rank answers its
    share (every world-th sample) in batches, with a progress bar on rank 0."""
    mine = share(samples, rank, world)
    indexed = []
    with tqdm(total=len(mine), desc="generating", unit="clip", disable=rank != 0) as bar:
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            texts = generate_answers(
                loaded,
                clips_of([sample for _, sample in batch], loaded.settings),
                [user_text_of(sample) for _, sample in batch],
                max_new_tokens=max_new_tokens,
                constrained=constrained,
            )
            for (index, sample), text in zip(batch, texts, strict=True):
                indexed.append((index, prediction_record(sample, text)))
            bar.update(len(batch))
    return gather_in_order(indexed, world)


def write_predictions(records: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
