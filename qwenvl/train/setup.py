"""Set a loaded model up for training: freeze what does not train, wrap it in LoRA, keep fp32
masters of the trained weights, and count parameters."""

from __future__ import annotations

import logging
import math
import re

import torch

from qwenvl.train.config import LoraSettings, TuneFlags

logger = logging.getLogger(__name__)

LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_LINEAR = ("attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")
# The projector: the final patch merger and the deepstack mergers feeding early LLM layers.
PROJECTOR = re.compile(r"(^|\.)visual\.(merger|deepstack_merger_list\.\d+)$")


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


def keep_fp32_masters(model: torch.nn.Module) -> int:
    """Trained parameters in fp32; frozen ones stay as loaded (bf16 on GPU).

    Under bf16 autocast the matmuls still run in bf16, but the optimizer updates fp32 weights:
    in bf16 (8 bits of mantissa) an update of lr 1e-5 on a weight of 0.02 rounds away entirely.
    DeepSpeed keeps its own fp32 copy, so this is for training without it. Returns how many
    parameters were upcast.
    """
    upcast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            upcast += 1
    return upcast


def setup_training(
    model: torch.nn.Module, flags: TuneFlags, lora: LoraSettings | None, deepspeed: bool
) -> torch.nn.Module:
    """Freeze or wrap the model for training: LoRA when `lora` is given, full otherwise; without
    DeepSpeed every trained parameter gets an fp32 master (see keep_fp32_masters)."""
    if lora is not None:
        model = apply_lora(model, flags, lora)
        model.enable_input_require_grads()
    else:
        freeze_for_full(model, flags)
    if not deepspeed:
        upcast = keep_fp32_masters(model)
        if upcast:
            logger.info("%d trained parameter tensors upcast to fp32 (bf16 autocast)", upcast)
    return model


def full_size(param: torch.nn.Parameter) -> int:
    """The weights a parameter stands for: under ZeRO-3 it holds only its shard (ds_numel is
    its full size); a bitsandbytes 4-bit weight (Params4bit) packs two weights a byte (its
    quant_state keeps the unpacked shape)."""
    if hasattr(param, "ds_numel"):
        return param.ds_numel
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else param.numel()


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trained) parameters, each at its full size (see full_size)."""
    sizes = [(full_size(p), p.requires_grad) for p in model.parameters()]
    return sum(n for n, _ in sizes), sum(n for n, grad in sizes if grad)


def trainable_summary(model: torch.nn.Module) -> str:
    total, trainable = parameter_counts(model)
    return f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
