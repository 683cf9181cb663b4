"""Load Qwen3-VL for any stage: the device, the dtype and attention kernel for it, and the
4-bit quantization of QLoRA."""

from __future__ import annotations

import importlib.util
import logging
import os

import torch
from transformers import Qwen3VLForConditionalGeneration

logger = logging.getLogger(__name__)
# The NVIDIA driver each CUDA major release needs (NVIDIA's CUDA Toolkit release notes, "CUDA
# Toolkit and Corresponding Driver Versions"); torch's wheels name the CUDA they were built for.
DRIVER_FOR_CUDA = {"13": "580", "12": "525", "11": "450"}


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


FLASH_DTYPES = (torch.bfloat16, torch.float16)
FLASH_MIN_CAPABILITY = (8, 0)  # flash-attn 2 runs on Ampere and newer


def attention_choice(
    device: torch.device, dtype: torch.dtype, capability: tuple[int, int] | None = None
) -> tuple[str, str]:
    """(kernel, why): flash_attention_2 only for bf16 or fp16 weights on a CUDA GPU of compute
    capability 8.0 or newer where flash-attn loads; sdpa otherwise, with the reason. The
    capability is the device's own unless given."""
    if device.type != "cuda":
        return "sdpa", f"flash-attn runs on CUDA only, not {device.type}"
    if dtype not in FLASH_DTYPES:
        return "sdpa", f"flash-attn takes bf16 or fp16, not {str(dtype).removeprefix('torch.')}"
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < FLASH_MIN_CAPABILITY:
        major, minor = capability
        return "sdpa", f"flash-attn 2 needs compute capability 8.0+, this GPU has {major}.{minor}"
    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa", "flash-attn is not installed (uv sync --extra gpu)"
    try:
        from flash_attn import flash_attn_func  # noqa: F401  (loads the compiled kernels)
    except Exception as err:  # ImportError, OSError: whatever the broken build raises
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return "sdpa", f"flash-attn is installed but does not load ({reason})"
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return "sdpa", "flash-attn loads, but transformers cannot use it here"
    return "flash_attention_2", "flash-attn loads and runs here"


def pick_attention(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> str:
    """The attention kernel for weights of `dtype` on `device` (attention_choice), with one log
    line saying why where flash-attn was wanted and is not used."""
    kernel, why = attention_choice(device, dtype)
    if kernel == "sdpa" and device.type == "cuda":
        logger.warning("attention sdpa: %s", why)
    return kernel


def use_device(device: torch.device) -> None:
    """Make `device` the current CUDA device of this process: kernels launched without one
    (xgrammar's Triton bitmask, NCCL's collectives) go to the current device, GPU 0 unless set."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


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
    attn = attn_implementation or pick_attention(runs_on, dtype)
    device_map = {"": runs_on} if device is not None else None
    if quantization is not None and device is None:
        # Training: the 4-bit weights go to this rank's GPU.
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


def cuda_problem() -> str | None:
    """Why torch cannot use a GPU here (with the CUDA it was built for), or None when it can."""
    if torch.cuda.is_available():
        return None
    built = torch.version.cuda
    if built is None:
        return f"torch {torch.__version__} is a CPU-only build"
    needs = DRIVER_FOR_CUDA.get(built.split(".")[0])
    driver = f" (it needs an NVIDIA driver {needs} or newer)" if needs else ""
    return f"torch {torch.__version__} sees no GPU; it was built for CUDA {built}{driver}"


if __name__ == "__main__":  # make test-gpu: python -m qwenvl.model --require-cuda
    import sys

    problem = cuda_problem() if "--require-cuda" in sys.argv else None
    sys.exit(f"error: make test-gpu needs a GPU: {problem}" if problem else 0)
