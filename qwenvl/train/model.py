"""Load Qwen3-VL, pick dtype and attention, and decide what trains (with or without LoRA)."""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass

import torch
from transformers import Qwen3VLForConditionalGeneration

logger = logging.getLogger(__name__)

LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_LINEAR = ("attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")
# The projector: the final patch merger and the deepstack mergers feeding early LLM layers.
PROJECTOR = re.compile(r"(^|\.)visual\.(merger|deepstack_merger_list\.\d+)$")


def pick_attention(device: str) -> str:
    """flash_attention_2 when installed and on CUDA, else sdpa."""
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(
    model_path: str, attn_implementation: str | None = None
) -> Qwen3VLForConditionalGeneration:
    """Qwen3-VL by path or hub id: bf16 on GPU, fp32 on CPU; no remote code."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    attn = attn_implementation or pick_attention(device)
    logger.info("loading %s: dtype %s, attention %s, device %s", model_path, dtype, attn, device)
    return Qwen3VLForConditionalGeneration.from_pretrained(
        model_path, dtype=dtype, attn_implementation=attn, trust_remote_code=False
    )


@dataclass(frozen=True)
class TuneFlags:
    vision: bool
    mlp: bool
    llm: bool

    def __post_init__(self) -> None:
        if not (self.vision or self.mlp or self.llm):
            raise ValueError(
                "nothing to train: set one of --tune_mm_vision/--tune_mm_mlp/--tune_mm_llm"
            )


def component(name: str) -> str:
    """Which part of Qwen3-VL a parameter or module belongs to: vision, mlp or llm."""
    if ".visual." in f".{name}":
        after = name.split("visual.", 1)[1]
        return "mlp" if after.startswith(("merger", "deepstack_merger_list")) else "vision"
    return "llm"


def freeze_for_full(model: torch.nn.Module, flags: TuneFlags) -> None:
    """Full fine-tuning: parameters train exactly when their component's flag is on."""
    for name, param in model.named_parameters():
        param.requires_grad = getattr(flags, component(name))


@dataclass(frozen=True)
class LoraSettings:
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05


def lora_targets(model: torch.nn.Module, flags: TuneFlags) -> tuple[list[str], list[str]]:
    """(LoRA target module names, modules trained in full) for the flags."""
    targets, full = [], []
    for name, module in model.named_modules():
        part = component(name) if name else "llm"
        if PROJECTOR.search(name) and flags.mlp:
            full.append(name)
        elif isinstance(module, torch.nn.Linear) and getattr(flags, part) and part != "mlp":
            suffixes = VISION_LINEAR if part == "vision" else LLM_LINEAR
            if name.endswith(suffixes):
                targets.append(name)
    return targets, full


def apply_lora(model: torch.nn.Module, flags: TuneFlags, lora: LoraSettings):
    """Wrap in a peft LoRA model; the projector trains in full and is saved with the adapter.

    With only --tune_mm_mlp there is nothing for LoRA to adapt, so the projector trains in
    full without peft and a full checkpoint is written.
    """
    from peft import LoraConfig, get_peft_model

    targets, full = lora_targets(model, flags)
    if not targets:
        logger.info("only the projector trains: no LoRA adapter, the projector is tuned in full")
        freeze_for_full(model, flags)
        return model
    for param in model.parameters():
        param.requires_grad = False
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=full or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_summary(model: torch.nn.Module) -> str:
    # Under ZeRO-3 a parameter holds only its shard; ds_numel is its full size.
    sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
    total = sum(n for n, _ in sizes)
    trainable = sum(n for n, grad in sizes if grad)
    return f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
