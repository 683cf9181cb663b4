"""Load any checkpoint for inference (base, LoRA adapter, merged, full) and generate in batches."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor

from qwenvl.answer import PROMPT, AnswerFormat
from qwenvl.data.preprocess import build_messages
from qwenvl.train.model import load_model, resolve_device
from qwenvl.video import PROCESSOR_VIDEO_KWARGS, VideoSettings, decode_video, prepare_clip

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    settings: VideoSettings
    answer_format: AnswerFormat
    kind: str  # "adapter", "full", or "training" (the model a Trainer holds)

    @cached_property
    def answer_grammar(self):
        """The answer grammar compiled for this model's tokenizer, once per model."""
        return compile_answer_grammar(self)

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


def answer_token_budget(tokenizer, answer_format: AnswerFormat, constrained: bool = False) -> int:
    """max_new_tokens for the format's widest 30-pair answer and its <|im_end|>.

    Free decoding: that answer in the model's tokenizer, plus slack. Constrained decoding may
    reach the same text through other token splits (the grammar allows any), so there the bound
    is its length in characters: no token is shorter than one. Either way generation stops at
    <|im_end|>, so a large budget costs nothing for answers that end.
    """
    widest = answer_format.widest_answer()
    if constrained:
        return len(widest) + 1
    return len(tokenizer(widest, add_special_tokens=False).input_ids) + 8


def compile_answer_grammar(loaded: LoadedModel):
    """The answer grammar compiled for the model's tokenizer and vocabulary (xgrammar)."""
    import xgrammar as xgr

    tokenizer = loaded.processor.tokenizer
    config = loaded.model.config
    vocab_size = getattr(config, "text_config", config).vocab_size
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    info = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=[stop]
    )
    return xgr.GrammarCompiler(info).compile_grammar(loaded.answer_format.grammar())


def clips_of(samples: list[dict], settings: VideoSettings) -> list[tuple[np.ndarray, float]]:
    """(frames, fps) of training-format samples, decoded at the model's frame size; a sample's
    recorded fps (its segment's nominal rate) wins over the container's."""
    clips = [decode_video(s["video"], settings) for s in samples]
    return [
        (frames, float(s.get("fps") or fps))
        for s, (frames, fps) in zip(samples, clips, strict=True)
    ]


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
    return processor(
        text=[text] * len(clips),
        videos=list(videos),
        video_metadata=list(metadata),
        padding=True,
        return_tensors="pt",
        **PROCESSOR_VIDEO_KWARGS,
    ).to(loaded.model.device)


@torch.inference_mode()
def generate_answers(
    loaded: LoadedModel,
    clips: list[tuple[np.ndarray, float]],
    prompt: str = PROMPT,
    max_new_tokens: int | None = None,
    constrained: bool = True,
    synced_gpus: bool = False,
) -> list[str]:
    """Greedy answers for a batch of (frames, fps) clips.

    Constrained (the default), every answer is 30 pairs of the model's answer format by
    construction: xgrammar masks, at each step and for each row of the batch, the tokens that
    would leave the answer grammar. `synced_gpus` keeps ranks stepping together when the
    weights are sharded (DeepSpeed ZeRO-3).
    """
    processor = loaded.processor
    inputs = build_inputs(loaded, clips, prompt)
    budget = max_new_tokens or answer_token_budget(
        processor.tokenizer, loaded.answer_format, constrained
    )
    extra = {}
    if constrained:
        from xgrammar.contrib.hf import LogitsProcessor

        # One processor per call: it keeps the grammar state of each row of this batch.
        extra["logits_processor"] = [LogitsProcessor(loaded.answer_grammar)]
    if not synced_gpus:
        # A cache allocated once: the default one is re-concatenated every step, which costs
        # batch x (3.5k-token video prefix) per token (see BENCHMARKS.md).
        extra["cache_implementation"] = "static"
    output = loaded.model.generate(
        **inputs,
        max_new_tokens=budget,
        do_sample=False,
        pad_token_id=processor.tokenizer.pad_token_id,
        synced_gpus=synced_gpus,
        **extra,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)
