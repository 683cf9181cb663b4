"""The transformers backend: a checkpoint loaded with transformers (and peft for a LoRA
adapter), answers generated greedily in batches, constrained to the answer grammar by xgrammar,
within a token budget fitted to the answer format. Also wraps the model a Trainer holds, for the
task metrics while training."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property

import torch
from transformers import AutoProcessor

from qwenvl.answer import AnswerFormat
from qwenvl.chat import chat_messages
from qwenvl.inference.backend import Answer, Backend, Request
from qwenvl.inference.spec import ModelSpec
from qwenvl.model import load_model, quantization_config, resolve_device, use_device
from qwenvl.video import PROCESSOR_VIDEO_KWARGS, prepare_clip

logger = logging.getLogger(__name__)
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}


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


def quantization_of(spec: ModelSpec, device: torch.device):
    """The bitsandbytes config a QLoRA adapter's base loads with, as in its training; None for
    an adapter trained on a full-precision base. ValueError where it cannot load (not CUDA)."""
    tuning = spec.tuning
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


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        spec: ModelSpec,
        synced_gpus: bool = False,
        compile: bool = False,
    ) -> None:
        self.model, self.processor, self.spec = model, processor, spec
        # synced_gpus keeps ranks stepping together when the weights are sharded (ZeRO-3).
        self.synced_gpus, self.compile = synced_gpus, compile

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        device: str | None = None,
        dtype: str = "auto",
        quantized: bool = True,
        compile: bool = False,
    ) -> TransformersBackend:
        """The spec's model onto `device` (default: CUDA when there is one, else the CPU). A
        LoRA adapter is applied on its base; a QLoRA adapter on its base quantized as in
        training (CUDA), or with `quantized` False (merging) on the full-precision base."""
        target = resolve_device(device)
        use_device(target)
        if spec.base is not None:
            from peft import PeftModel

            quantization = quantization_of(spec, target) if quantized else None
            base = load_model(
                spec.base, device=target, dtype=DTYPES[dtype], quantization=quantization
            )
            model = PeftModel.from_pretrained(base, spec.path)
        else:
            model = load_model(spec.path, device=target, dtype=DTYPES[dtype])
        processor = AutoProcessor.from_pretrained(spec.processor_path)
        model.eval()
        return cls(model, processor, spec, compile=compile)

    @cached_property
    def grammar(self):
        """The answer grammar compiled for the model's tokenizer and vocabulary (xgrammar)."""
        import xgrammar as xgr

        tokenizer = self.processor.tokenizer
        config = self.model.config
        vocab_size = getattr(config, "text_config", config).vocab_size
        stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=[stop]
        )
        return xgr.GrammarCompiler(info).compile_grammar(self.spec.answer_format.grammar())

    def describe(self) -> str:
        return (
            f"{self.spec.kind} model on {self.model.device} ({self.model.dtype}), video "
            f"{self.spec.video}, answers {self.spec.answer_format}"
        )

    def prompt_texts(self, requests: Sequence[Request]) -> list[str]:
        """The chat texts of the requests, as the processor's template renders them."""
        return [
            self.processor.apply_chat_template(
                chat_messages(r.human), add_generation_prompt=True, tokenize=False
            )
            for r in requests
        ]

    def inputs(self, requests: Sequence[Request]) -> dict:
        """Model inputs for a batch, left-padded so prompts end together."""
        prepared = [
            prepare_clip(frames, fps, self.spec.video.for_view(view))
            for r in requests
            for view, (frames, fps) in enumerate(r.views)
        ]
        videos, metadata = zip(*prepared, strict=True)
        self.processor.tokenizer.padding_side = "left"
        return self.processor(
            text=self.prompt_texts(requests),
            videos=list(videos),
            video_metadata=list(metadata),
            padding=True,
            return_tensors="pt",
            **PROCESSOR_VIDEO_KWARGS,
        ).to(self.model.device)

    @torch.inference_mode()
    def answer(
        self,
        requests: Sequence[Request],
        constrained: bool = True,
        max_new_tokens: int | None = None,
    ) -> list[Answer]:
        """Greedy answers for a batch. Constrained, xgrammar masks, at each step and for each
        row of the batch, the tokens that would leave the answer grammar."""
        tokenizer = self.processor.tokenizer
        inputs = self.inputs(requests)
        budget = max_new_tokens or answer_token_budget(
            tokenizer, self.spec.answer_format, constrained
        )
        extra = {}
        if constrained:
            from xgrammar.contrib.hf import LogitsProcessor

            # One processor per call: it keeps the grammar state of each row of this batch.
            extra["logits_processor"] = [LogitsProcessor(self.grammar)]
        if not self.synced_gpus:
            # A cache allocated once: the default one is re-concatenated every step, which
            # costs batch x (3.5k-token video prefix) per token (see BENCHMARKS.md). On CUDA
            # transformers would compile the decode step for it: only with --compile.
            extra["cache_implementation"] = "static"
            extra["disable_compile"] = not self.compile
        output = self.model.generate(
            **inputs,
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            synced_gpus=self.synced_gpus,
            **extra,
        )
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = output[:, prompt_length:]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        prompts = inputs["attention_mask"].sum(dim=1).tolist()
        ends = {tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        lengths = [
            next((i for i, t in enumerate(row) if t in ends), len(row))
            for row in new_tokens.tolist()
        ]
        return [
            Answer(text, int(prompt), int(length))
            for text, prompt, length in zip(texts, prompts, lengths, strict=True)
        ]
