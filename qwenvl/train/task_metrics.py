"""Task metrics while training: answer a few validation clips and score them in metres."""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers.integrations import is_deepspeed_zero3_enabled

from qwenvl.answer import AnswerFormat, AnswerParseError, parse_pairs
from qwenvl.evaluation import pairs_of
from qwenvl.inference import LoadedModel, clips_of, generate_answers
from qwenvl.metrics import error_metrics
from qwenvl.video import VideoSettings

# Logged next to eval_loss; error_metrics' keys -> the Trainer's names.
LOGGED = {
    "ade_m": "ade",
    "fde_m": "fde",
    "speed_mae": "speed_mae",
    "curvature_mae": "curvature_mae",
}


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
        self.samples, self.processor, self.settings = samples, processor, settings
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
        share = self.samples[rank::world_size]
        # Every rank runs the same number of batches: ZeRO-3 ranks must generate together.
        batches = math.ceil(math.ceil(len(self.samples) / world_size) / self.batch_size)
        synced = is_deepspeed_zero3_enabled() and world_size > 1
        was_training = model.training
        model.eval()
        pairs = []
        try:
            for b in range(batches):
                batch = share[b * self.batch_size : (b + 1) * self.batch_size]
                real = len(batch)
                batch = batch or self.samples[:1]  # a stand-in, its answer dropped
                clips = clips_of(batch, self.settings)
                texts = generate_answers(loaded, clips, constrained=True, synced_gpus=synced)
                for sample, text in zip(batch[:real], texts[:real], strict=True):
                    try:  # the grammar makes every answer parse; the guard keeps training safe
                        pairs.append((parse_pairs(text), pairs_of(sample, "future").tolist()))
                    except AnswerParseError:
                        continue
        finally:
            model.train(was_training)
        if world_size > 1 and torch.distributed.is_initialized():
            gathered: list = [None] * world_size
            torch.distributed.all_gather_object(gathered, pairs)
            pairs = [p for rank_pairs in gathered for p in rank_pairs]
        pred, true = (np.array([p[i] for p in pairs]).reshape(-1, 30, 2) for i in (0, 1))
        scores = error_metrics(pred, true)
        if not scores["n"]:
            return {}
        return {f"eval_{name}": scores[key] for key, name in LOGGED.items()}
