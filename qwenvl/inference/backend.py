"""The one interface that answers clips: a request is a segment's clips (each camera's frames,
decoded as training decoded them, and their frame rate) and the user turn asked with them; an
answer is the text and its token counts. Backends behind it: transformers (the default; also
the model a Trainer holds) and vLLM (its own environment). Evaluation, prediction and the task
metrics use only this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qwenvl.inference.spec import ModelSpec

Clip = tuple[np.ndarray, float]
"""(frames (T, H, W, 3) uint8 RGB at the model's frame size, the clip's real frame rate: Qwen3-VL's
timestamps come from it), as qwenvl.inference.clips decodes them."""


@dataclass(frozen=True)
class Request:
    views: tuple[Clip, ...]
    """Each camera's clip, in the order of the user turn's <video> tags."""
    human: str
    """The user turn: a <video> tag where each clip goes, then the text (qwenvl.chat)."""

    @classmethod
    def single(cls, frames: np.ndarray, fps: float, user_text: str) -> Request:
        """One camera's clip, asked with `user_text` after it."""
        from qwenvl.chat import VIDEO_TAG

        return cls(((frames, fps),), f"{VIDEO_TAG}\n{user_text}")


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    answer_tokens: int


class Backend(ABC):
    """Answers clips with one model, as its spec says it was trained."""

    name: str
    spec: ModelSpec

    @abstractmethod
    def answer(
        self,
        requests: Sequence[Request],
        constrained: bool = True,
        max_new_tokens: int | None = None,
    ) -> list[Answer]:
        """Greedy answers, in the requests' order. Constrained (the default), every answer is
        30 pairs of the model's answer format by construction (the answer grammar)."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the log: what loaded, where it runs, and how it reads clips."""

    def close(self) -> None:
        """Free what the backend holds (processes, memory)."""
        return None
