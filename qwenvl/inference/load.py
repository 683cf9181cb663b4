"""Load any checkpoint for inference (base, LoRA adapter, merged, full) with what it was trained
on: its video settings, answer format and prompt."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoProcessor

from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings
from qwenvl.cli import UserError
from qwenvl.files import first_stored
from qwenvl.model import load_model, quantization_config, resolve_device, use_device
from qwenvl.train.settings import Tuning
from qwenvl.video import VideoSettings

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    settings: VideoSettings
    answer_format: AnswerFormat
    kind: str  # "adapter", "full", or "training" (the model a Trainer holds)
    prompt: PromptSettings | None = None  # as stored with the checkpoint; None: it stores none

    @cached_property
    def answer_grammar(self):
        """The answer grammar compiled for this model's tokenizer, once per model."""
        from qwenvl.inference.generate import compile_answer_grammar

        return compile_answer_grammar(self)

    def user_prompt(self) -> PromptSettings:
        """The prompt to ask this model with: its own, else the built-in one."""
        return self.prompt or PromptSettings()

    def describe(self) -> str:
        """One line for the log: what loaded, where it runs, and how it reads clips."""
        return (
            f"{self.kind} model on {self.model.device} ({self.model.dtype}), video "
            f"{self.settings}, answers {self.answer_format}"
        )


def _has_processor(path: Path) -> bool:
    return (path / "processor_config.json").is_file() or (
        path / "preprocessor_config.json"
    ).is_file()


DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}


def load_for_inference(
    model_path: str,
    base_model: str | None = None,
    device: str | None = None,
    data_dir: str | Path | None = None,
    dtype: str = "auto",
    quantized: bool = True,
) -> LoadedModel:
    """A LoRA adapter directory is applied on its base (or --base-model); anything else loads
    directly, onto `device` (default: CUDA when there is one, else the CPU).

    Video settings, answer format and prompt come from the checkpoint, else from the base
    model, else (answer format) from `data_dir`, the dataset being evaluated; video settings
    then fall back to the VIDEO_* environment variables or the defaults (a base model has none).

    A QLoRA adapter (tuning.json records its 4-bit base) is applied on its base quantized as in
    training, which needs CUDA; with `quantized` False (merging) on the bf16 base instead.
    """
    target = resolve_device(device)
    use_device(target)
    path = Path(model_path)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        base = base_model or json.loads(adapter_config.read_text())["base_model_name_or_path"]
        quantization = quantization_of(path, target) if quantized else None
        base_weights = load_model(
            base, device=target, dtype=DTYPES[dtype], quantization=quantization
        )
        model = PeftModel.from_pretrained(base_weights, str(path))
        kind = "adapter"
    else:
        base = base_model or model_path
        model = load_model(model_path, device=target, dtype=DTYPES[dtype])
        kind = "full"
    processor = AutoProcessor.from_pretrained(model_path if _has_processor(path) else base)
    settings = first_stored(VideoSettings, path, base)
    if settings is None:
        settings = VideoSettings.from_env()
        logger.warning(
            "no video settings stored with %s; using VIDEO_* or defaults: %s", model_path, settings
        )
    answer_format = first_stored(AnswerFormat, path, base, data_dir) or AnswerFormat()
    prompt = first_stored(PromptSettings, path, base)
    model.eval()
    return LoadedModel(model, processor, settings, answer_format, kind, prompt)


def quantization_of(adapter: Path, device: torch.device):
    """The bitsandbytes config a QLoRA adapter's base loads with, as in its training; None for
    an adapter trained on a full-precision base. ValueError where it cannot load (not CUDA)."""
    tuning = Tuning.load(adapter)
    if tuning is None or not tuning.quantization:
        return None
    try:
        if device.type != "cuda":
            raise ValueError(f"that needs CUDA, not {device}")
        return quantization_config(tuning.quantization)
    except ValueError as err:
        raise ValueError(
            f"a QLoRA adapter, trained on a {tuning.quantization} base, runs on that base "
            f"loaded the same way, and {err}"
        ) from None


def load_for_script(
    args, model_path: str, data_dir: str | Path | None = None, quantized: bool = True
) -> LoadedModel:
    """load_for_inference for a script (its --base-model and --device): a bad device or a model
    that cannot load is one line."""
    try:
        resolve_device(args.device)
    except ValueError as err:
        raise UserError(f"--device: {err}") from None
    try:
        return load_for_inference(
            model_path,
            args.base_model,
            args.device,
            data_dir,
            getattr(args, "dtype", "auto"),
            quantized,
        )
    except (OSError, ValueError) as err:
        raise UserError(f"{model_path}: cannot load ({str(err).splitlines()[0]})") from None
