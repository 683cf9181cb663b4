"""Load Qwen3-VL, pick dtype and attention, and decide what trains (with or without LoRA)."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass

import torch
from transformers import Qwen3VLForConditionalGeneration

logger = logging.getLogger(__name__)

LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_LINEAR = ("attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")
# The projector: the final patch merger and the deepstack mergers feeding early LLM layers.
PROJECTOR = re.compile(r"(^|\.)visual\.(merger|deepstack_merger_list\.\d+)$")


def resolve_device(requested: str | None = None) -> torch.device:
    """The device to run on: `requested` ("cuda", "cuda:1", "cpu"), else CUDA when present."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"unknown device '{requested}' (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{requested}' asked for, but CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device '{requested}': only {torch.cuda.device_count()} GPU(s) visible")
    return device


def pick_attention(device: torch.device) -> str:
    """flash_attention_2 when installed and on CUDA, else sdpa."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def quantization_config(quant: str | None):
    """bitsandbytes 4-bit NF4 settings for QLoRA (QUANT=4bit), or None; ValueError with the
    cause where it cannot run (no CUDA, no bitsandbytes, another value)."""
    if not quant or quant == "none":
        return None
    if quant != "4bit":
        raise ValueError(f"QUANT={quant}: only 4bit (QLoRA, NF4) is supported")
    if not torch.cuda.is_available():
        raise ValueError("QUANT=4bit needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run here")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("QUANT=4bit needs bitsandbytes: uv sync --extra quant")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        # Module names match from the model's root in transformers 5: the vision tower is
        # model.visual. Naming any module replaces the default skip of lm_head, so it is
        # named again: the LM head and the whole vision side stay in bf16.
        llm_int8_skip_modules=["model.visual", "lm_head"],
    )


def load_model(
    model_path: str,
    attn_implementation: str | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    quantization=None,
) -> Qwen3VLForConditionalGeneration:
    """Qwen3-VL by path or hub id: bf16 for CUDA, fp32 for the CPU (or `dtype`); no remote code.

    With `device`, the weights load straight onto it (inference); without, they stay on the
    CPU for the Trainer or DeepSpeed to place, and dtype and attention follow the GPU if any.
    A `quantization` config (QLoRA) loads the language model in 4 bits onto this rank's GPU.
    """
    runs_on = device if device is not None else resolve_device()
    dtype = dtype or (torch.bfloat16 if runs_on.type == "cuda" else torch.float32)
    attn = attn_implementation or pick_attention(runs_on)
    device_map = {"": runs_on} if device is not None else None
    if quantization is not None:
        device_map = {"": torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))}
    logger.info(
        "loading %s: dtype %s, attention %s, device %s%s",
        model_path,
        dtype,
        attn,
        runs_on,
        ", language model in 4-bit NF4" if quantization is not None else "",
    )
    return Qwen3VLForConditionalGeneration.from_pretrained(
        model_path,
        dtype=dtype,
        attn_implementation=attn,
        trust_remote_code=False,
        device_map=device_map,
        quantization_config=quantization,
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


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trained) parameters; under ZeRO-3 a parameter holds only its shard, and its
    ds_numel is its full size."""
    sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
    return sum(n for n, _ in sizes), sum(n for n, grad in sizes if grad)


def trainable_summary(model: torch.nn.Module) -> str:
    total, trainable = parameter_counts(model)
    return f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
