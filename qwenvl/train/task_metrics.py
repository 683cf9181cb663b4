"""Task metrics while training: answer a few validation clips with the model being trained
(through the inference interface, as evaluation does) and score them in metres."""

from __future__ import annotations

import logging

import numpy as np
import torch
from transformers.integrations import is_deepspeed_zero3_enabled

from qwenvl import record
from qwenvl.answer import AnswerParseError, parse_pairs
from qwenvl.inference.answering import answer_samples
from qwenvl.inference.clips import ClipUnreadable, clip_of
from qwenvl.inference.spec import ModelSpec
from qwenvl.inference.transformers_backend import TransformersBackend
from qwenvl.metrics import logged_metrics, scoring_problem
from qwenvl.task import HORIZON_PAIRS

logger = logging.getLogger(__name__)


def readable(samples, spec: ModelSpec) -> list[dict]:
    """The samples that can be answered and scored; the others named in the log and left out
    (read once here, so no evaluation stops on one)."""
    kept = []
    for sample in samples:
        try:
            problem = scoring_problem(sample)
            if problem:
                raise ClipUnreadable(problem)
            clip_of(sample, spec.video)
            kept.append(sample)
        except ClipUnreadable as err:
            logger.warning("task metrics leave out %s: %s", sample.get("id"), err)
    return kept


class GenerationMetrics:
    """At each evaluation, `samples` validation clips are answered with constrained generation,
    each rank taking its share, and scored: eval_ade, eval_fde, eval_speed_mae,
    eval_curvature_mae (qwenvl.metrics). Under DeepSpeed ZeRO-3 the ranks generate in step
    (synced_gpus), since each holds only a shard of the weights."""

    def __init__(self, samples: list[dict], processor, spec: ModelSpec, batch_size: int) -> None:
        self.spec = spec
        self.samples = readable(samples, spec)
        self.processor, self.batch_size = processor, max(1, batch_size)

    def __call__(self, model: torch.nn.Module, rank: int, world_size: int) -> dict[str, float]:
        if not self.samples:
            return {}
        world = world_size if torch.distributed.is_initialized() else 1
        synced = is_deepspeed_zero3_enabled() and world > 1
        backend = TransformersBackend(model, self.processor, self.spec, synced_gpus=synced)
        was_training = model.training
        model.eval()
        try:
            done = answer_samples(
                backend, self.samples, rank, world, self.batch_size, lockstep=synced, progress=False
            )
        finally:
            model.train(was_training)
        pred, true = [], []
        for index, answer in done.answers:
            try:  # the grammar makes every answer parse; the guard keeps training safe
                pred.append(parse_pairs(answer.text))
            except AnswerParseError:
                continue
            true.append(record.pairs(self.samples[index], "future"))
        shape = (-1, HORIZON_PAIRS, 2)
        return logged_metrics(np.array(pred).reshape(shape), np.array(true).reshape(shape))
