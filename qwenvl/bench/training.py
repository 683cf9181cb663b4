"""train: seconds per step and tokens/s with the label-only loss training uses, each
configuration measured alone (LoRA, LoRA without peft's fp32 cast of its inputs, full); on CUDA
with a published config (2b, 4b, 8b), a real-sized model per attention kernel and batch size,
with MFU and peak memory."""

from __future__ import annotations

import os
from pathlib import Path

from qwenvl.bench.common import best_time


def measure_training(
    build, batch: dict, target, repeats: int, steps: int, input_casting: bool = True
) -> dict:
    """Seconds per optimizer step of one configuration, as train.py trains it: its label-only
    loss (qwenvl.train.trainer.label_only_loss), bf16 autocast on CUDA, AdamW over the trained
    parameters. Measured alone: `build()` makes the model, and it and its optimizer are freed
    before this returns, so the next configuration's peak memory is its own. `input_casting`
    False runs LoRA without peft's fp32 cast of its inputs (peft.helpers.
    disable_input_dtype_casting)."""
    import contextlib
    import gc

    import torch
    from peft.helpers import disable_input_dtype_casting

    from qwenvl.train.setup import parameter_counts
    from qwenvl.train.trainer import label_only_loss

    if target.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(target)
    model = build()
    model.train()
    device_batch = {k: v.to(target) if hasattr(v, "to") else v for k, v in batch.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        for _ in range(steps):
            casting = (
                contextlib.nullcontext() if input_casting else disable_input_dtype_casting(model)
            )
            with (
                torch.autocast(target.type, torch.bfloat16, enabled=target.type == "cuda"),
                casting,
            ):
                loss, _ = label_only_loss(model, device_batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if target.type == "cuda":
            torch.cuda.synchronize()

    try:
        step()  # warm-up
        seconds = best_time(step, repeats) / steps
        tokens = int(device_batch["attention_mask"].sum())
        result = {
            "s_per_step": seconds,
            "tokens_per_s": tokens / seconds,
            "parameters": parameter_counts(model),
        }
        if target.type == "cuda":
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated(target) / 1024**3
    except torch.cuda.OutOfMemoryError:
        result = {"result": "out of memory"}
    finally:
        model = optimizer = device_batch = None  # the step's closure holds them otherwise
        gc.collect()
        if target.type == "cuda":
            torch.cuda.empty_cache()
    return result


def bench_train(
    model_path: str,
    train_json: Path,
    repeats: int,
    device: str | None,
    steps: int = 4,
    settings=None,
) -> dict:
    from transformers import AutoProcessor

    from qwenvl.data.collator import VideoCollator
    from qwenvl.data.dataset import SupervisedDataset
    from qwenvl.data.samples import load_samples
    from qwenvl.model import load_model, resolve_device
    from qwenvl.train.config import LoraSettings, TuneFlags
    from qwenvl.train.setup import setup_training
    from qwenvl.video import VideoSettings

    target = resolve_device(device)
    processor = AutoProcessor.from_pretrained(model_path)
    dataset = SupervisedDataset(
        load_samples([str(train_json)])[:8], processor, settings or VideoSettings(), 32768
    )
    batch = VideoCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(2)])
    batch.pop("skipped_samples", None)
    results = {"device": str(target), "tokens_per_step": int(batch["attention_mask"].sum())}

    def build(lora):
        # As train.py sets it up: bf16 weights on GPU, fp32 trained parameters.
        model = setup_training(
            load_model(model_path, device=target), TuneFlags(False, True, True), lora, False
        )
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        return model

    for mode, lora, casting in (
        ("lora", LoraSettings(), True),
        ("lora_without_input_casting", LoraSettings(), False),
        ("full", None, True),
    ):
        results[mode] = measure_training(
            lambda lora=lora: build(lora), batch, target, repeats, steps, casting
        )
    return results


def bench_train_config(
    name: str, tokenizer_path: str, train_json: Path, repeats: int, device: str | None
) -> dict:
    """Real-sized training steps: LoRA and full, batch 1/2/4 of 30-frame clips at the default
    video settings, gradient checkpointing, bf16 autocast with fp32 trained weights; step time,
    tokens/s, samples/s, MFU and peak memory, per attention kernel available."""
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from qwenvl.data.collator import VideoCollator
    from qwenvl.data.dataset import SupervisedDataset
    from qwenvl.data.samples import load_samples
    from qwenvl.model import attention_choice, resolve_device
    from qwenvl.standins.architectures import (
        PUBLISHED_PARAMETERS,
        parameter_count,
        published_config,
    )
    from qwenvl.train.compute import estimated_flops, peak_tflops
    from qwenvl.train.config import LoraSettings, TuneFlags
    from qwenvl.train.setup import setup_training
    from qwenvl.video import VideoSettings

    processor = AutoProcessor.from_pretrained(tokenizer_path)
    tokens = processor.tokenizer.convert_tokens_to_ids
    ids = {
        "image_token_id": tokens("<|image_pad|>"),
        "video_token_id": tokens("<|video_pad|>"),
        "vision_start_token_id": tokens("<|vision_start|>"),
        "vision_end_token_id": tokens("<|vision_end|>"),
    }
    config = published_config(name, ids)
    result = {
        "model_config": name,
        "parameters": parameter_count(config),
        "published_parameters": PUBLISHED_PARAMETERS[name],
    }
    target = resolve_device(device)
    if target.type != "cuda":
        result["note"] = "the config is built and counted; the timed steps need a CUDA GPU"
        return result
    peak = peak_tflops(torch.cuda.get_device_name(target), os.environ.get("PEAK_TFLOPS"))
    dataset = SupervisedDataset(
        load_samples([str(train_json)])[:8], processor, VideoSettings(), 32768
    )
    collate = VideoCollator(processor.tokenizer.pad_token_id)
    # The kernels this GPU runs for bf16 weights, chosen as training chooses them.
    flash = attention_choice(target, torch.bfloat16)[0] == "flash_attention_2"
    attentions = ["sdpa"] + (["flash_attention_2"] if flash else [])
    rows = []
    for attention in attentions:
        for mode in ("lora", "full"):
            for batch_size in (1, 2, 4):

                def build(attention=attention, mode=mode):
                    model = Qwen3VLForConditionalGeneration._from_config(
                        config, dtype=torch.bfloat16, attn_implementation=attention
                    ).to(target)
                    lora = LoraSettings() if mode == "lora" else None
                    model = setup_training(model, TuneFlags(False, True, True), lora, False)
                    model.gradient_checkpointing_enable({"use_reentrant": False})
                    model.enable_input_require_grads()
                    return model

                batch = collate([dataset[i % len(dataset)] for i in range(batch_size)])
                batch.pop("skipped_samples", None)
                row = {"attention": attention, "mode": mode, "batch": batch_size}
                row.update(measure_training(build, batch, target, repeats, steps=1))
                if "s_per_step" in row:
                    tokens = int(batch["attention_mask"].sum())
                    flops = estimated_flops(tokens, *row.pop("parameters"))
                    row["samples_per_s"] = batch_size / row["s_per_step"]
                    row["mfu"] = flops / row["s_per_step"] / (peak * 1e12) if peak else None
                rows.append(row)
    result["steps"] = rows
    return result
