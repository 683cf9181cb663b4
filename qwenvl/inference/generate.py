"""Answer clips with a loaded model: batched greedy generation, constrained by default to the
answer grammar (xgrammar), within a token budget fitted to the answer format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qwenvl.answer import AnswerFormat
from qwenvl.chat import model_messages
from qwenvl.inference.load import LoadedModel
from qwenvl.video import PROCESSOR_VIDEO_KWARGS, VideoSettings, decode_video, prepare_clip


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


class ClipUnreadable(ValueError):
    """A clip that cannot be answered: str() says why (not found, does not decode, ...)."""


def decode_problem(err: Exception) -> str:
    """The cause of a failed decode in a few words: PyAV's message repeats the path, its
    strerror is the cause alone."""
    return getattr(err, "strerror", None) or str(err).splitlines()[0] or type(err).__name__


def clip_of(sample: dict, settings: VideoSettings) -> tuple[np.ndarray, float]:
    """(frames, fps) of a training-format sample, decoded at the model's frame size (its
    recorded fps, the segment's nominal rate, wins over the container's); ClipUnreadable when
    its video is missing, does not decode, or holds fewer frames than it claims."""
    video = sample.get("video")
    if not isinstance(video, str) or not Path(video).is_file():
        raise ClipUnreadable("video not found")
    try:
        frames, fps = decode_video(video, settings)
    except Exception as err:  # PyAV raises many kinds (InvalidDataError, EOFError, ...)
        raise ClipUnreadable(f"cannot decode ({decode_problem(err)})") from None
    claimed = sample.get("frames")
    if claimed and len(frames) < claimed:
        raise ClipUnreadable(f"decodes {len(frames)} of the {claimed} frames it claims")
    return frames, float(sample.get("fps") or fps)


def build_inputs(
    loaded: LoadedModel, clips: list[tuple[np.ndarray, float]], user_texts: list[str]
) -> dict:
    """Model inputs for a batch of (frames, fps) clips and their user texts, left-padded so
    prompts end together."""
    processor = loaded.processor
    texts = [
        processor.apply_chat_template(
            model_messages(user_text), add_generation_prompt=True, tokenize=False
        )
        for user_text in user_texts
    ]
    prepared = [prepare_clip(f, fps, loaded.settings) for f, fps in clips]
    videos, metadata = zip(*prepared, strict=True)
    processor.tokenizer.padding_side = "left"
    return processor(
        text=texts,
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
    user_texts: list[str],
    max_new_tokens: int | None = None,
    constrained: bool = True,
    synced_gpus: bool = False,
) -> list[str]:
    """Greedy answers for a batch of (frames, fps) clips, each asked with its user text.

    Constrained (the default), every answer is 30 pairs of the model's answer format by
    construction: xgrammar masks, at each step and for each row of the batch, the tokens that
    would leave the answer grammar. `synced_gpus` keeps ranks stepping together when the
    weights are sharded (DeepSpeed ZeRO-3).
    """
    processor = loaded.processor
    inputs = build_inputs(loaded, clips, user_texts)
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
