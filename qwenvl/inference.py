"""Load any checkpoint for inference (base, LoRA adapter, merged, full) and generate in batches."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor

from qwenvl.answer import PROMPT, AnswerFormat
from qwenvl.data.preprocess import build_messages
from qwenvl.train.model import load_model, resolve_device
from qwenvl.video import PROCESSOR_VIDEO_KWARGS, VideoSettings, prepare_clip

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    settings: VideoSettings
    answer_format: AnswerFormat
    kind: str  # "adapter" or "full"

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


def _stored(loader, *directories: str | Path | None):
    """The first settings found stored in one of the directories (checkpoint, then base)."""
    for directory in directories:
        if directory is not None and Path(directory).is_dir():
            found = loader(directory)
            if found is not None:
                return found
    return None


def load_for_inference(
    model_path: str,
    base_model: str | None = None,
    device: str | None = None,
    data_dir: str | Path | None = None,
) -> LoadedModel:
    """A LoRA adapter directory is applied on its base (or --base-model); anything else loads
    directly, onto `device` (default: CUDA when there is one, else the CPU).

    Video settings and the answer format come from the checkpoint, else from the base model,
    else (answer format) from `data_dir`, the dataset being evaluated; video settings then
    fall back to the VIDEO_* environment variables or the defaults (a base model has none).
    """
    target = resolve_device(device)
    path = Path(model_path)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        base = base_model or json.loads(adapter_config.read_text())["base_model_name_or_path"]
        model = PeftModel.from_pretrained(load_model(base, device=target), str(path))
        kind = "adapter"
    else:
        base = base_model or model_path
        model = load_model(model_path, device=target)
        kind = "full"
    processor = AutoProcessor.from_pretrained(model_path if _has_processor(path) else base)
    settings = _stored(VideoSettings.load, path, base)
    if settings is None:
        settings = VideoSettings.from_env()
        logger.warning(
            "no video settings stored with %s; using VIDEO_* or defaults: %s", model_path, settings
        )
    answer_format = _stored(AnswerFormat.load, path, base, data_dir) or AnswerFormat()
    model.eval()
    return LoadedModel(model, processor, settings, answer_format, kind)


def answer_token_budget(tokenizer, answer_format: AnswerFormat) -> int:
    """max_new_tokens for the format's widest 30-pair answer, its <|im_end|> and some slack."""
    widest = answer_format.widest_answer()
    return len(tokenizer(widest, add_special_tokens=False).input_ids) + 8


def build_inputs(
    loaded: LoadedModel, clips: list[tuple[np.ndarray, float]], prompt: str = PROMPT
) -> dict:
    """Model inputs for a batch of (frames, fps) clips, left-padded so prompts end together."""
    processor = loaded.processor
    text = processor.apply_chat_template(
        build_messages(prompt), add_generation_prompt=True, tokenize=False
    )
    prepared = [prepare_clip(f, fps, loaded.settings) for f, fps in clips]
    videos, metadata = zip(*prepared, strict=True)
    processor.tokenizer.padding_side = "left"
    inputs = processor(
        text=[text] * len(clips),
        videos=list(videos),
        video_metadata=list(metadata),
        padding=True,
        return_tensors="pt",
        **PROCESSOR_VIDEO_KWARGS,
    ).to(loaded.model.device)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(loaded.model.dtype)
    return inputs


@torch.inference_mode()
def generate_answers(
    loaded: LoadedModel,
    clips: list[tuple[np.ndarray, float]],
    prompt: str = PROMPT,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Greedy answers for a batch of (frames, fps) clips."""
    processor = loaded.processor
    inputs = build_inputs(loaded, clips, prompt)
    output = loaded.model.generate(
        **inputs,
        max_new_tokens=max_new_tokens
        or answer_token_budget(processor.tokenizer, loaded.answer_format),
        do_sample=False,
        pad_token_id=processor.tokenizer.pad_token_id,
        # A cache allocated once: the default one is re-concatenated every step, which costs
        # batch x (3.5k-token video prefix) per token (see BENCHMARKS.md).
        cache_implementation="static",
    )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)
