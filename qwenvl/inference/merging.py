"""Merging a LoRA adapter into its base: always in fp32 (on any device), saved in the dtype the
user picks, with a report of how much of the fine-tune the saved weights keep: the share of the
update that survives rounding to that dtype, and how far the merged model's logits on a few
clips are from the adapter's, against how far the fine-tune moved them.

Why: a LoRA update is small beside its weight (often 0.1-1%); bf16 keeps 8 bits of mantissa, so
adding it in bf16, or storing the sum in bf16, rounds much of it away."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

SAVE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# Beyond these the merged weights lose enough of the fine-tune to say so.
KEPT_SHARE_FLOOR = 0.95
LOGITS_SHARE_CEILING = 0.05


def base_dtype(base: str) -> str:
    """The dtype the base model's weights are published in (its config's), as bf16, fp16 or
    fp32; bf16 where the config does not say."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError):
        return "bf16"
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return DTYPE_NAMES.get(dtype, "bf16")


@dataclass
class UpdateKept:
    """How much of the update (merged weight - base weight) the saved dtype keeps: 1 - the norm
    of what rounding changed in it, over its norm, across every adapted or fully trained
    weight."""

    modules: int = 0
    update_sq: float = 0.0
    error_sq: float = 0.0

    def add(self, base: torch.Tensor, update: torch.Tensor, dtype: torch.dtype) -> None:
        base, update = base.detach().float(), update.detach().float()
        stored = (base + update).to(dtype).float() - base.to(dtype).float()
        self.modules += 1
        self.update_sq += float(update.square().sum())
        self.error_sq += float((stored - update).square().sum())

    @property
    def share(self) -> float:
        if not self.update_sq:
            return 1.0
        return max(0.0, 1.0 - (self.error_sq / self.update_sq) ** 0.5)


def update_kept(model, dtype: torch.dtype) -> UpdateKept:
    """UpdateKept over a peft model's LoRA layers and fully trained modules (modules_to_save),
    before they are merged."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    kept = UpdateKept()
    for module in model.modules():
        if isinstance(module, LoraLayer) and hasattr(module, "get_delta_weight"):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    kept.add(
                        module.get_base_layer().weight, module.get_delta_weight(adapter), dtype
                    )
        elif isinstance(module, ModulesToSaveWrapper):
            trained = module.modules_to_save[module.active_adapters[0]]
            originals = dict(module.original_module.named_parameters())
            for name, param in trained.named_parameters():
                kept.add(originals[name], param - originals[name], dtype)
    return kept


def encoded_samples(samples, processor, settings) -> list[dict]:
    """Model inputs of training-format samples with their answers (teacher-forced), and the
    positions whose next token is the answer's."""
    from qwenvl.chat import sample_messages
    from qwenvl.data.dataset import answer_mask, encode_views
    from qwenvl.inference.clips import views_of

    tokenizer = processor.tokenizer
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    encoded = []
    for sample in samples:
        text = processor.apply_chat_template(sample_messages(sample, True), tokenize=False)
        inputs = dict(encode_views(processor, views_of(sample, settings), text, settings))
        mask = answer_mask(inputs["input_ids"][0], header, im_end)
        inputs["positions"] = torch.nonzero(mask[1:]).flatten()  # t predicts t + 1
        encoded.append(inputs)
    return encoded


@torch.inference_mode()
def answer_logits(model, encoded: list[dict]) -> torch.Tensor:
    """The fp32 logits at the answer positions of every encoded sample, concatenated."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    out = []
    for inputs in encoded:
        batch = {k: v.to(device) for k, v in inputs.items() if k != "positions"}
        batch["pixel_values_videos"] = batch["pixel_values_videos"].to(dtype)
        logits = model(**batch, use_cache=False).logits[0]
        out.append(logits[inputs["positions"].to(device)].float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def merge_report(kept: UpdateKept, dtype: str, logits: dict | None) -> dict:
    """merge_report.json: what the saved weights keep of the fine-tune, and the advice."""
    report = {
        "merged_in": "fp32",
        "saved_dtype": dtype,
        "update_kept_share": kept.share,
        "weights_compared": kept.modules,
        "logits": logits,
    }
    losing = kept.share < KEPT_SHARE_FLOOR or (
        logits is not None and logits["share_of_the_fine_tune"] > LOGITS_SHARE_CEILING
    )
    report["advice"] = (
        f"saved in {dtype}, the merged weights lose part of the fine-tune: save in fp32 "
        "(--save-dtype fp32), or serve the adapter unmerged (evaluate.py / predict.py "
        "--model-path ADAPTER)"
        if losing
        else f"saved in {dtype}, the merged weights keep the fine-tune"
    )
    return report


def compare_logits(adapter: torch.Tensor, base: torch.Tensor, merged: torch.Tensor) -> dict:
    """How far the merged model's logits are from the adapter's, in the fine-tune's units."""
    effect = float((adapter - base).norm())
    gap = float((merged - adapter).norm())
    return {
        "positions": int(adapter.shape[0]),
        "fine_tune_effect": effect,
        "merged_vs_adapter": gap,
        "share_of_the_fine_tune": gap / effect if effect else 0.0,
    }


def write_report(report: dict, folder: Path) -> None:
    (folder / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
