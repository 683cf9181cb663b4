"""Task metrics while training: answer a few validation clips and score them in metres."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from transformers.integrations import is_deepspeed_zero3_enabled

from qwenvl import record
from qwenvl.answer import AnswerFormat, AnswerParseError, parse_pairs
from qwenvl.chat import user_text_of
from qwenvl.distributed import gather_in_order, share
from qwenvl.evaluate.metrics import error_metrics
from qwenvl.evaluate.predictions import scoring_problem
from qwenvl.inference.generate import ClipUnreadable, clip_of, generate_answers
from qwenvl.inference.load import LoadedModel
from qwenvl.video import VideoSettings

logger = logging.getLogger(__name__)

# Logged next to eval_loss; error_metrics' keys -> the Trainer's names.
LOGGED = {
    "ade_m": "ade",
    "fde_m": "fde",
    "speed_mae": "speed_mae",
    "curvature_mae": "curvature_mae",
}


def readable(samples, settings: VideoSettings) -> list[dict]:
    """The samples that can be answered and scored; the others named in the log and left out
    (read once here, so no evaluation stops on one)."""
    kept = []
    for sample in samples:
        try:
            problem = scoring_problem(sample)
            if problem:
                raise ClipUnreadable(problem)
            clip_of(sample, settings)
            kept.append(sample)
        except ClipUnreadable as err:
            logger.warning("task metrics leave out %s: %s", sample.get("id"), err)
    return kept


class GenerationMetrics:
    """At each evaluation, `samples` validation clips are answered with constrained generation,
    each rank taking its share, and scored: eval_ade, eval_fde, eval_speed_mae,
    eval_curvature_mae. Under DeepSpeed ZeRO-3 the ranks generate in step (synced_gpus), since
    each holds only a shard of the weights."""

    def __init__(
        self,
        samples: list[dict],
        processor,
        settings: VideoSettings,
        answer_format: AnswerFormat,
        batch_size: int,
    ) -> None:
        self.samples = readable(samples, settings)
        self.processor, self.settings = processor, settings
        self.answer_format, self.batch_size = answer_format, max(1, batch_size)
        self._loaded: LoadedModel | None = None

    def _model(self, model: torch.nn.Module) -> LoadedModel:
        if self._loaded is None or self._loaded.model is not model:
            self._loaded = LoadedModel(
                model, self.processor, self.settings, self.answer_format, "training"
            )
        return self._loaded

    def __call__(self, model: torch.nn.Module, rank: int, world_size: int) -> dict[str, float]:
        loaded = self._model(model)
        mine = share(self.samples, rank, world_size)
        # Every rank runs the same number of batches: ZeRO-3 ranks must generate together.
        batches = math.ceil(math.ceil(len(self.samples) / world_size) / self.batch_size)
        synced = is_deepspeed_zero3_enabled() and world_size > 1
        was_training = model.training
        model.eval()
        indexed = []
        try:
            for b in range(batches):
                batch = mine[b * self.batch_size : (b + 1) * self.batch_size]
                real = len(batch)
                batch = batch or [(-1, self.samples[0])]  # a stand-in, its answer dropped
                samples = [sample for _, sample in batch]
                texts = generate_answers(
                    loaded,
                    [clip_of(sample, self.settings) for sample in samples],
                    [user_text_of(sample) for sample in samples],
                    constrained=True,
                    synced_gpus=synced,
                )
                for (index, sample), text in zip(batch[:real], texts[:real], strict=True):
                    try:  # the grammar makes every answer parse; the guard keeps training safe
                        pairs = (parse_pairs(text), record.pairs(sample, "future").tolist())
                    except AnswerParseError:
                        continue
                    indexed.append((index, pairs))
        finally:
            model.train(was_training)
        pairs = gather_in_order(indexed, world_size if torch.distributed.is_initialized() else 1)
        pred, true = (np.array([p[i] for p in pairs]).reshape(-1, 30, 2) for i in (0, 1))
        scores = error_metrics(pred, true)
        if not scores["n"]:
            return {}
        return {f"eval_{name}": scores[key] for key, name in LOGGED.items()}
