"""Answering many samples through a backend: each rank its share of them, in batches, with a
progress bar on rank 0, and every rank's answers gathered back in the samples' order, so any
number of processes gives one process's results. A sample that cannot be answered (its video
missing or undecodable, or one `problem` names) is named and counted, and the rest are still
answered. Evaluation and the task metrics while training both answer this way."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from qwenvl.chat import human_of
from qwenvl.distributed import gather_in_order, share
from qwenvl.inference.backend import Answer, Backend, Request
from qwenvl.inference.clips import ClipUnreadable, views_of


@dataclass
class Answered:
    """The answered samples, in order, as (index in the samples, answer), and the others as
    (index, (sample id, why))."""

    answers: list[tuple[int, Answer]]
    unanswered: list[tuple[int, tuple[str, str]]]


def answer_samples(
    backend: Backend,
    samples: Sequence[dict],
    rank: int = 0,
    world: int = 1,
    batch_size: int = 4,
    constrained: bool = True,
    max_new_tokens: int | None = None,
    problem: Callable[[dict], str | None] | None = None,
    lockstep: bool = False,
    progress: bool = True,
) -> Answered:
    """Answer `samples` (training-format), this rank taking every world-th one; the results of
    every rank on every rank. `lockstep` runs the same number of batches on every rank (a rank
    short of samples answers a stand-in, dropped): ranks that hold shards of the weights
    (ZeRO-3) must generate together."""
    mine = share(samples, rank, world)
    batches = math.ceil(len(mine) / batch_size)
    if lockstep:
        batches = math.ceil(math.ceil(len(samples) / world) / batch_size)
    answered, unanswered = [], []
    bar = tqdm(total=len(mine), desc="generating", unit="clip", disable=rank != 0 or not progress)
    with bar:
        for number in range(batches):
            batch = mine[number * batch_size : (number + 1) * batch_size]
            ready, requests = [], []
            for index, sample in batch:
                try:
                    why = problem(sample) if problem is not None else None
                    if why:
                        raise ClipUnreadable(why)
                    views = views_of(sample, backend.spec.video)
                except ClipUnreadable as err:
                    unanswered.append((index, (sample.get("id", f"sample {index}"), str(err))))
                    continue
                ready.append(index)
                requests.append(Request(views, human_of(sample)))
            if lockstep and not requests:
                stand_in = samples[0]  # its answer dropped
                requests.append(Request(views_of(stand_in, backend.spec.video), human_of(stand_in)))
            if requests:
                answers = backend.answer(requests, constrained, max_new_tokens)
                answered += list(zip(ready, answers[: len(ready)], strict=True))
            bar.update(len(batch))
    return Answered(
        gather_in_order_pairs(answered, world), gather_in_order_pairs(unanswered, world)
    )


def gather_in_order_pairs(
    indexed: list[tuple[int, object]], world: int
) -> list[tuple[int, object]]:
    """Every rank's (index, result) pairs on every rank, in index order, indices kept."""
    pairs = gather_in_order([(index, (index, item)) for index, item in indexed], world)
    return list(pairs)
