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

from qwenvl.cli import UserError
from qwenvl.inference.spec import ModelSpec

BACKENDS = ("transformers", "vllm")


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


def open_backend(
    name: str,
    spec: ModelSpec,
    device: str | None = None,
    dtype: str = "auto",
    compile: bool = False,
    **options,
) -> Backend:
    """The `name` backend with the spec's model loaded; ValueError or OSError where it cannot."""
    if name == "transformers":
        from qwenvl.inference.transformers_backend import TransformersBackend

        return TransformersBackend.load(
            spec, device=device, dtype=dtype, compile=compile, **options
        )
    if name == "vllm":
        from qwenvl.inference.vllm_backend import VllmBackend

        return VllmBackend.load(spec, device=device, dtype=dtype, **options)
    raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")


def open_for_script(args, spec: ModelSpec, **options) -> Backend:
    """open_backend for a script's --backend, --device, --dtype and --compile: a device that is
    not there or a model that cannot load is one line."""
    from qwenvl.model import resolve_device

    name = getattr(args, "backend", "transformers")
    if name == "vllm":
        if getattr(args, "compile", False):
            raise UserError("--compile is for the transformers backend (vLLM compiles itself)")
        options = {
            "tensor_parallel_size": args.tensor_parallel_size,
            "max_batch": getattr(args, "batch_size", 8),
            "merged_dir": args.vllm_merged_dir,
            **options,
        }
    else:
        try:
            resolve_device(args.device)
        except ValueError as err:
            raise UserError(f"--device: {err}") from None
    try:
        return open_backend(
            name,
            spec,
            device=args.device,
            dtype=getattr(args, "dtype", "auto"),
            compile=getattr(args, "compile", False),
            **options,
        )
    except (OSError, ValueError) as err:
        raise UserError(f"{spec.path}: cannot load ({str(err).splitlines()[0]})") from None
