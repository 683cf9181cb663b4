#!/usr/bin/env python
"""Measure the pipeline's speed against the naive way of doing the same work, on the same inputs.

prep: seconds per 20 s source clip, ours (decode once) against reopen-and-seek per segment with
OpenCV mp4v at full resolution, and the pure decode time as the floor. loader: training samples
per second per DataLoader worker against qwen-vl-utils + processor in the main process. train:
s/step and tokens/s with the label-only loss training uses, each configuration measured alone
(LoRA, LoRA without peft's fp32 cast of its inputs, full; on CUDA with --model-config, a
real-sized model per attention kernel and batch size, with MFU). generate: evaluation tokens/s,
batched against one sample at a time, constrained against free, and constrained per KV cache
(static, dynamic) and attention kernel. scale: the dataset steps and a rank's training start-up
at N segments, against the row-by-row way.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qwenvl.cli import run_script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what",
        choices=["prep", "loader", "train", "generate", "scale", "all"],
        help="which benchmark (all: every one but scale)",
    )
    parser.add_argument(
        "--segments",
        default="10000,100000,1000000",
        help="scale: manifest sizes to measure, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--reference-up-to",
        type=int,
        default=100000,
        help="scale: also run the way before, up to this many segments (default: %(default)s)",
    )
    parser.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    parser.add_argument("--work-dir", help="where inputs are built (default: a temporary folder)")
    parser.add_argument(
        "--model-path", help="model for train/generate (default: the tiny model, built here)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats, best kept (default: %(default)s)"
    )
    parser.add_argument(
        "--model-config",
        choices=["2b", "4b", "8b"],
        help="train: a Qwen3-VL-<size>-Instruct-shaped model built from its published config "
        "(random weights, no download) instead of --model-path; timings need CUDA",
    )
    parser.add_argument(
        "--device",
        help="device for train/generate: cpu, cuda or cuda:N (default: cuda when there is a GPU)",
    )
    parser.add_argument(
        "--resolutions",
        default="640x360,1920x1080",
        help="prep source sizes (default: %(default)s)",
    )
    return parser.parse_args(argv)


def best_time(fn, repeats: int) -> float:
    """Fastest wall time of `repeats` calls: the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------- prep


def decode_floor(video: bytes) -> None:
    """Decode every frame once and touch nothing else: the least segmenting can cost."""
    import av

    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass


def per_segment_reference(source: Path, starts: list[int], out_dir: Path) -> None:
    """The common public way: reopen and seek the source for every segment, write full-size mp4v."""
    import cv2

    for index, start in enumerate(starts):
        capture = cv2.VideoCapture(str(source))
        capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        writer = cv2.VideoWriter(
            str(out_dir / f"seg{index:02d}.mp4"),
            cv2.VideoWriter_fourcc(*"mp4v"),
            30,
            (width, height),
        )
        for _ in range(30):
            ok, frame = capture.read()
            if not ok:
                break
            writer.write(frame)
        writer.release()
        capture.release()


def bench_prep(work: Path, repeats: int, resolutions: str) -> dict:
    from qwenvl.prepare.labels import segment_starts
    from qwenvl.prepare.rawdata import RawDataset
    from qwenvl.prepare.writer import process_clip
    from qwenvl.standins.synthetic import write_synthetic_dataset

    results = {}
    for size in resolutions.split(","):
        width, height = (int(v) for v in size.split("x"))
        root = work / f"raw_{size}"
        if not root.exists():
            write_synthetic_dataset(root, 1, clip_seconds=20, width=width, height=height, seed=0)
        dataset = RawDataset(root)
        clip_id, chunk = dataset.clip_index.index[0], int(dataset.clip_index["chunk"].iloc[0])
        video = dataset.video_bytes(clip_id, chunk)
        source = work / f"source_{size}.mp4"
        source.write_bytes(video)
        starts = segment_starts(dataset.frame_timestamps(clip_id, chunk).to_numpy())

        def ours(dataset=dataset, clip_id=clip_id, chunk=chunk, size=size):
            with tempfile.TemporaryDirectory(dir=work) as out:
                process_clip(dataset, clip_id, chunk, Path(out), max_width=640)

        def reference(source=source, starts=starts):
            with tempfile.TemporaryDirectory(dir=work) as out:
                per_segment_reference(source, starts, Path(out))

        row = {
            "ours_s_per_clip": best_time(ours, repeats),
            "decode_floor_s_per_clip": best_time(lambda v=video: decode_floor(v), repeats),
            "per_segment_reference_s_per_clip": best_time(reference, max(1, repeats - 1)),
        }
        row["ours_over_floor"] = row["ours_s_per_clip"] / row["decode_floor_s_per_clip"]
        row["speedup_vs_reference"] = (
            row["per_segment_reference_s_per_clip"] / row["ours_s_per_clip"]
        )
        results[size] = row
    return results


# ---------------------------------------------------------------- loader, train, generate


def prepare_inputs(work: Path, model_path: str | None, data: bool = True) -> tuple[str, Path]:
    """A tiny model (unless given) and training JSON from 2 synthetic 640x360 clips (built only
    with `data`)."""
    import subprocess

    scripts = Path(__file__).resolve().parent
    if model_path is None:
        model_path = str(work / "tiny_model")
        if not Path(model_path).exists():
            subprocess.run(
                [sys.executable, scripts / "make_tiny_model.py", "--output-dir", model_path],
                check=True,
                capture_output=True,
            )
    training = work / "training"
    if data and not training.exists():
        steps = [
            [
                "make_synthetic_data.py",
                "--output-dir",
                work / "raw_loader",
                "--num-clips",
                "2",
                "--clip-seconds",
                "8",
                "--seed",
                "1",
                "--no-progress",
            ],
            [
                "prepare_video_segments.py",
                "--data-dir",
                work / "raw_loader",
                "--output-dir",
                work / "seg",
            ],
            [
                "prepare_huggingface_dataset.py",
                "--segments-dir",
                work / "seg",
                "--output-dir",
                work / "hf",
                "--split",
                "by-clip",
                "--val-fraction",
                "0",
                "--test-fraction",
                "0",
            ],
            ["convert_to_training_format.py", "--input-dir", work / "hf", "--output-dir", training],
        ]
        for script, *args in steps:
            subprocess.run(
                [sys.executable, scripts / script, *map(str, args)], check=True, capture_output=True
            )
    return model_path, training / "train.json"


def bench_loader(model_path: str, train_json: Path, repeats: int) -> dict:
    import torch
    from qwen_vl_utils import process_vision_info
    from transformers import AutoProcessor

    from qwenvl.chat import model_messages
    from qwenvl.data.collator import VideoCollator
    from qwenvl.data.dataset import SupervisedDataset
    from qwenvl.data.samples import load_samples
    from qwenvl.video import VideoSettings

    processor = AutoProcessor.from_pretrained(model_path)
    settings = VideoSettings()
    samples = load_samples([str(train_json)])[:16]
    dataset = SupervisedDataset(samples, processor, settings, max_length=32768)
    collate = VideoCollator(processor.tokenizer.pad_token_id)
    result = {"samples": len(samples), "video_settings": settings.__dict__}
    for workers in (0, 1, 2):

        def run(workers=workers):
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=2, num_workers=workers, collate_fn=collate
            )
            for _ in loader:
                pass

        result[f"ours_samples_per_s_workers_{workers}"] = len(samples) / best_time(run, repeats)

    def reference():
        for sample in samples:
            messages = model_messages(
                sample["conversations"][0]["value"].replace("<video>\n", ""),
                sample["conversations"][1]["value"],
            )
            messages[0]["content"][0] = {
                "type": "video",
                "video": sample["video"],
                "fps": 30,
                "min_pixels": settings.min_pixels,
                "max_pixels": settings.max_pixels,
            }
            text = processor.apply_chat_template(messages, tokenize=False)
            _, videos, kwargs = process_vision_info(
                messages, return_video_kwargs=True, return_video_metadata=True, image_patch_size=16
            )
            videos, metadata = zip(*videos, strict=True)
            processor(
                text=[text],
                videos=list(videos),
                video_metadata=list(metadata),
                return_tensors="pt",
                do_resize=False,
                **kwargs,
            )

    result["reference_samples_per_s_main_process"] = len(samples) / best_time(reference, repeats)
    result["ours_1_worker_over_reference"] = (
        result["ours_samples_per_s_workers_1"] / result["reference_samples_per_s_main_process"]
    )
    return result


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
    from qwenvl.train.settings import LoraSettings, TuneFlags
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


def bench_generate(
    model_path: str, train_json: Path, repeats: int, device: str | None, batch: int = 8
) -> dict:
    """Tokens/s of greedy decoding with answers of full length (30 pairs), batched and one at a
    time: generate() alone on ready inputs, and end to end with decoding and the processor."""
    import torch

    from qwenvl.chat import PromptSettings
    from qwenvl.data.samples import load_samples
    from qwenvl.inference.generate import answer_token_budget, build_inputs, generate_answers
    from qwenvl.inference.load import load_for_inference
    from qwenvl.video import decode_video

    loaded = load_for_inference(model_path, device=device)
    new = answer_token_budget(loaded.processor.tokenizer, loaded.answer_format)
    samples = load_samples([str(train_json)])[:batch]
    clips = [decode_video(s["video"], loaded.settings) for s in samples]
    model = loaded.model
    # Every sample generates exactly `new` tokens, so both ways do the same work.
    kwargs = {
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": False,
        "cache_implementation": "static",
    }

    user_text = PromptSettings().user_text()
    batched_inputs = build_inputs(loaded, clips, [user_text] * len(clips))
    single_inputs = [build_inputs(loaded, [c], [user_text]) for c in clips]
    with torch.inference_mode():
        model.generate(**single_inputs[0], max_new_tokens=2, cache_implementation="static")
        decoding = constrained_vs_free(loaded, batched_inputs, repeats)
        decoding.update(cache_and_attention(loaded, model_path, batched_inputs, repeats))
        batched = best_time(lambda: model.generate(**batched_inputs, **kwargs), repeats)
        single = best_time(lambda: [model.generate(**i, **kwargs) for i in single_inputs], repeats)
        model.generation_config.min_new_tokens = new
        free = {"max_new_tokens": new, "constrained": False}
        texts = [user_text] * len(clips)
        batched_e2e = best_time(lambda: generate_answers(loaded, clips, texts, **free), 1)
        single_e2e = best_time(
            lambda: [generate_answers(loaded, [c], [user_text], **free) for c in clips], 1
        )
        model.generation_config.min_new_tokens = None
    tokens = batch * new
    return {
        **decoding,
        "batch_size": batch,
        "new_tokens_per_sample": new,
        "generate_batched_tokens_per_s": tokens / batched,
        "generate_one_at_a_time_tokens_per_s": tokens / single,
        "generate_speedup": single / batched,
        "end_to_end_batched_tokens_per_s": tokens / batched_e2e,
        "end_to_end_one_at_a_time_tokens_per_s": tokens / single_e2e,
        "end_to_end_speedup": single_e2e / batched_e2e,
    }


def decode_rate(loaded, inputs: dict, repeats: int, constrained: bool, cache: str) -> tuple:
    """(tokens/s, tokens per answer) of one batched generate() on ready inputs, counting each
    answer's tokens up to its <|im_end|>; `cache` is "static" or "dynamic" (the default)."""
    import torch
    from xgrammar.contrib.hf import LogitsProcessor

    from qwenvl.inference.generate import answer_token_budget

    tokenizer = loaded.processor.tokenizer
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    budget = answer_token_budget(tokenizer, loaded.answer_format, constrained=True)
    prompt = inputs["input_ids"].shape[1]
    counted = []
    extra = {"cache_implementation": "static"} if cache == "static" else {}

    def run():
        processors = [LogitsProcessor(loaded.answer_grammar)] if constrained else []
        out = loaded.model.generate(
            **inputs, max_new_tokens=budget, do_sample=False, logits_processor=processors, **extra
        )[:, prompt:]
        stops = out == stop
        ends = torch.where(stops.any(dim=1), stops.int().argmax(dim=1) + 1, out.shape[1])
        counted[:] = ends.tolist()

    with torch.inference_mode():
        run()  # warm-up: on CUDA a static cache compiles here
        seconds = best_time(run, repeats)
    return sum(counted) / seconds, sum(counted) / len(counted)


def constrained_vs_free(loaded, inputs: dict, repeats: int) -> dict:
    """Tokens/s of one batched generate() on the same clips, answers constrained to the grammar
    (xgrammar masks every step) and free; each counts the tokens it generated up to <|im_end|>."""
    result = {}
    for mode in ("constrained", "free"):
        rate, per_answer = decode_rate(loaded, inputs, repeats, mode == "constrained", "static")
        result[f"{mode}_tokens_per_s"], result[f"{mode}_tokens_per_answer"] = rate, per_answer
    result["constrained_over_free_tokens_per_s"] = (
        result["constrained_tokens_per_s"] / result["free_tokens_per_s"]
    )
    return result


def cache_and_attention(loaded, model_path: str, inputs: dict, repeats: int) -> dict:
    """Constrained generation's tokens/s for each KV cache (static, as evaluation uses it, and
    dynamic) and each attention kernel this machine runs (sdpa; flash-attn on CUDA where it
    loads): on CUDA a static cache makes generate() compile, and flash-attn slices the whole
    cache every step, so which is faster is a GPU measurement."""
    from qwenvl.inference.load import LoadedModel
    from qwenvl.model import load_model, pick_attention

    device = loaded.model.device
    kernels = ["sdpa"] + (["flash_attention_2"] if pick_attention(device) != "sdpa" else [])
    rows = []
    for kernel in kernels:
        model = load_model(model_path, attn_implementation=kernel, device=device)
        variant = LoadedModel(
            model, loaded.processor, loaded.settings, loaded.answer_format, "full"
        )
        for cache in ("static", "dynamic"):
            rate, _ = decode_rate(variant, inputs, repeats, True, cache)
            rows.append({"attention": kernel, "cache": cache, "constrained_tokens_per_s": rate})
        model = variant = None
    return {"constrained_generation": rows}


def bench_train_config(
    name: str, tokenizer_path: str, train_json: Path, repeats: int, device: str | None
) -> dict:
    """Real-sized training steps: LoRA and full, batch 1/2/4 of 30-frame clips at the default
    video settings, gradient checkpointing, bf16 autocast with fp32 trained weights; step time,
    tokens/s, samples/s, MFU and peak memory, per attention kernel available."""
    import importlib.util

    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from qwenvl.data.collator import VideoCollator
    from qwenvl.data.dataset import SupervisedDataset
    from qwenvl.data.samples import load_samples
    from qwenvl.model import resolve_device
    from qwenvl.standins.architectures import (
        PUBLISHED_PARAMETERS,
        parameter_count,
        published_config,
    )
    from qwenvl.train.compute import estimated_flops, peak_tflops
    from qwenvl.train.settings import LoraSettings, TuneFlags
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
    attentions = ["sdpa"] + (
        ["flash_attention_2"] if importlib.util.find_spec("flash_attn") else []
    )
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


# ---------------------------------------------------------------- scale


def scaled_segments(work: Path, segments: int) -> Path:
    """A segments folder of `segments` rows: the manifest of 4 synthetic 20 s clips (76
    segments at 640x360) replicated, each copy of a clip under a new clip_id (so splits stay by
    clip), every row's video one of the real segment files."""
    import pandas as pd

    from qwenvl.prepare.writer import MANIFEST, MANIFEST_ROW_GROUP, SOURCE

    base = work / "scale_base"
    if not (base / "segments" / "manifest.parquet").is_file():
        scripts = Path(__file__).resolve().parent
        for script, args in (
            ("make_synthetic_data.py", ["--output-dir", base / "raw", "--num-clips", "4",
                                        "--seed", "2", "--no-progress"]),
            ("prepare_video_segments.py", ["--data-dir", base / "raw", "--output-dir",
                                           base / "segments"]),
        ):  # fmt: skip
            subprocess.run(
                [sys.executable, scripts / script, *map(str, args)], check=True, capture_output=True
            )
    out = work / f"scale_{segments}"
    if (out / "manifest.parquet").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = pd.read_parquet(base / "segments" / "manifest.parquet")
    copies = -(-segments // len(manifest))
    parts = []
    for copy in range(copies):
        part = manifest.copy()
        part["clip_id"] = part["clip_id"] + f"-{copy:06d}"
        parts.append(part)
    manifest = pd.concat(parts, ignore_index=True).iloc[:segments]
    manifest.to_parquet(out / MANIFEST, row_group_size=MANIFEST_ROW_GROUP)
    (out / "videos").symlink_to((base / "segments" / "videos").resolve())
    (out / SOURCE).write_text((base / "segments" / SOURCE).read_text())
    return out


_MEASURED = """
import json, runpy, sys, time
out, script, *args = sys.argv[1:]
sys.argv = [script, *args]
start = time.perf_counter()
try:
    runpy.run_path(script, run_name="__main__")
    code = 0
except SystemExit as exit:
    code = exit.code or 0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak = int(status.split()[0]) / 1024**2
with open(out, "w") as f:
    json.dump({"seconds": time.perf_counter() - start, "peak_gib": peak, "exit": code}, f)
"""


def measured(work: Path, script: Path, *args) -> dict:
    """Seconds and peak memory (resident set, GiB) of one run of `script` in a fresh process;
    the seconds leave out the interpreter's start, not the script's own imports."""
    report = work / "measured.json"
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(report), str(script), *map(str, args)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result = json.loads(report.read_text())
    if result.pop("exit"):
        raise RuntimeError(f"{script.name} {' '.join(map(str, args))} failed")
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if last.startswith("{"):  # what the script measured itself
        result.update(json.loads(last))
    return result


def bench_scale(work: Path, segments: int, model_path: str, reference: bool) -> dict:
    """The dataset steps and a rank's training start-up on a manifest of `segments` rows, ours
    and (with `reference`) the way before: a row at a time into Python objects, and a start-up
    that opened every video for its length."""
    here = Path(__file__).resolve()
    scripts = here.parent
    source = scaled_segments(work, segments)
    results = {"segments": segments}
    for way in ("ours", "reference") if reference else ("ours",):
        hf, training = work / f"hf_{segments}_{way}", work / f"training_{segments}_{way}"
        for path in (hf, training):
            shutil.rmtree(path, ignore_errors=True)
        if way == "ours":
            steps = {
                "prepare_huggingface_dataset": (
                    scripts / "prepare_huggingface_dataset.py",
                    ["--segments-dir", source, "--output-dir", hf],
                ),
                "convert_to_training_format": (
                    scripts / "convert_to_training_format.py",
                    ["--input-dir", hf, "--output-dir", training],
                ),
            }
        else:
            steps = {
                "prepare_huggingface_dataset": (here, ["_reference-dataset", source, hf]),
                "convert_to_training_format": (here, ["_reference-convert", hf, training]),
            }
        row = {name: measured(work, script, *args) for name, (script, args) in steps.items()}
        start_args = ["_startup", training / "train.json", model_path]
        row["training_start_up"] = measured(
            work, here, *start_args, *(["--reference"] if way == "reference" else [])
        )
        results[way] = row
    return results


def startup(train_json: str, model_path: str, reference: bool) -> None:
    """A rank's training start-up: its samples, their checks and lengths, the first batch."""
    import torch
    from transformers import AutoProcessor

    from qwenvl.data.collator import VideoCollator
    from qwenvl.data.dataset import SupervisedDataset
    from qwenvl.data.samples import load_samples
    from qwenvl.video import VideoSettings

    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(model_path)
    if reference:
        dataset = ReferenceDataset(train_json, processor, VideoSettings(), 8192)
    else:
        dataset = SupervisedDataset(load_samples([train_json]), processor, VideoSettings(), 8192)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, collate_fn=VideoCollator(processor.tokenizer.pad_token_id)
    )
    next(iter(loader))
    print(
        json.dumps({"seconds_after_imports": time.perf_counter() - start, "samples": len(dataset)})
    )


def _python_answer(future_speed, future_curvature) -> str:
    """An answer the way before: round() and format each value in Python."""

    def written(value: float, decimals: int, digits: int) -> str:
        widest = round(10**digits - 10.0**-decimals, decimals)
        return f"{min(max(round(float(value), decimals), -widest), widest) + 0.0:.{decimals}f}"

    pairs = zip(future_speed, future_curvature, strict=True)
    return "[" + ", ".join(f"({written(v, 1, 2)}, {written(c, 3, 1)})" for v, c in pairs) + "]"


def reference_row(row, video: str) -> dict:
    """A dataset row the way before: a Python dict per manifest row, built field by field."""
    from qwenvl.chat import INSTRUCTION

    answer = _python_answer(row["future_speed"], row["future_curvature"])
    labels = ("future_speed", "future_curvature", "observed_speed", "observed_curvature")
    return {
        "id": f"{row['clip_id']}_seg{int(row['segment_index']):02d}",
        "clip_id": row["clip_id"],
        "segment_index": int(row["segment_index"]),
        "video": video,
        "fps": float(row["fps"]),
        "frames": int(row["frames"]),
        "width": int(row["width"]),
        "height": int(row["height"]),
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video", "video": video, "fps": float(row["fps"]), "text": None},
                    {"type": "text", "text": INSTRUCTION, "video": None, "fps": None},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": answer, "video": None, "fps": None}],
            },
        ],
        "answer": answer,
        **{name: [float(v) for v in row[name]] for name in labels},
        "history_speed": [],
        "history_curvature": [],
    }


def reference_dataset(segments_dir: Path, output_dir: Path) -> None:
    """The DatasetDict the way before: every manifest row a Python dict, then from_list."""
    import datasets
    import pandas as pd
    from datasets import Dataset, DatasetDict

    from qwenvl.prepare.splits import OFFICIAL_SPLITS, SPLITS

    manifest = pd.read_parquet(segments_dir / "manifest.parquet")
    rows = {name: [] for name in SPLITS}
    for _, row in manifest.iterrows():
        video = str((segments_dir / row["video"]).resolve())
        rows[OFFICIAL_SPLITS[row["split"]]].append(reference_row(row, video))
    # The history columns are empty lists here (no --ego-history): typed as ours are.
    floats = datasets.List(datasets.Value("float64"))

    def table(r):
        found = Dataset.from_list(r)
        for name in ("history_speed", "history_curvature"):
            found = found.cast_column(name, floats)
        return found

    DatasetDict({name: table(r) for name, r in rows.items() if r}).save_to_disk(str(output_dir))


def reference_convert(input_dir: Path, output_dir: Path) -> None:
    """The training JSON the way before: every row a Python dict, the list dumped at once."""
    from datasets import load_from_disk

    from qwenvl.data import SPLIT_FILES

    dataset = load_from_disk(str(input_dir))
    output_dir.mkdir(parents=True)
    for split, filename in SPLIT_FILES.items():
        samples = []
        for row in dataset[split] if split in dataset else []:
            user = row["messages"][0]["content"][1]["text"]
            samples.append(
                {
                    "id": row["id"],
                    "video": os.path.relpath(row["video"], output_dir.resolve()),
                    **{k: row[k] for k in ("fps", "frames", "width", "height")},
                    "conversations": [
                        {"from": "human", "value": f"<video>\n{user}"},
                        {"from": "gpt", "value": row["answer"]},
                    ],
                    **{k: row[k] for k in ("clip_id", "segment_index", "future_speed")},
                    **{k: row[k] for k in ("future_curvature", "observed_speed")},
                    "observed_curvature": row["observed_curvature"],
                    "history_speed": row["history_speed"],
                    "history_curvature": row["history_curvature"],
                }
            )
        (output_dir / filename).write_text(json.dumps(samples, indent=1) + "\n")


class ReferenceDataset:
    """The training start-up the way before: the JSON parsed whole into dicts, every video
    opened for its frame count, every sample's text tokenised."""

    def __init__(self, train_json: str, processor, settings, max_length: int) -> None:
        from qwenvl.data.dataset import SupervisedDataset, TokenCounter, probe_video

        self.inner = SupervisedDataset.__new__(SupervisedDataset)
        self.inner.processor, self.inner.settings, self.inner.max_length = (
            processor,
            settings,
            max_length,
        )
        tokenizer = processor.tokenizer
        self.inner.header_ids = tokenizer("<|im_start|>assistant\n").input_ids
        self.inner.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.inner.counter = counter = TokenCounter(processor, settings)
        folder = Path(train_json).parent
        samples = json.loads(Path(train_json).read_text())
        self.samples = []
        for sample in samples:
            sample["video"] = str(folder / sample["video"])
            layout = probe_video(sample["video"])
            visual = counter.visual(layout.frames, layout.height, layout.width, sample["fps"])
            if visual + counter.text(sample) <= max_length:
                self.samples.append(sample)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.inner.encode(self.samples[index])


def machine() -> dict:
    import torch

    info = {
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run(args: argparse.Namespace) -> int:
    work_ctx = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(args.work_dir or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    wanted = ["prep", "loader", "train", "generate"] if args.what == "all" else [args.what]
    results = {"machine": machine()}
    if "prep" in wanted:
        results["prep"] = bench_prep(work, args.repeats, args.resolutions)
    if "scale" in wanted:
        model_path = args.model_path or prepare_inputs(work, None)[0]
        results["scale"] = [
            bench_scale(work, int(n), model_path, int(n) <= args.reference_up_to)
            for n in args.segments.split(",")
        ]
    if set(wanted) & {"loader", "train", "generate"}:
        from qwenvl.model import resolve_device

        # A published config off CUDA is only built and counted: it needs the tokenizer alone.
        counted_only = (
            wanted == ["train"] and args.model_config and resolve_device(args.device).type != "cuda"
        )
        model_path, train_json = prepare_inputs(work, args.model_path, data=not counted_only)
        for name, fn in (
            ("loader", bench_loader),
            ("train", bench_train),
            ("generate", bench_generate),
        ):
            if name == "train" and args.model_config and "train" in wanted:
                results[name] = bench_train_config(
                    args.model_config, model_path, train_json, args.repeats, args.device
                )
            elif name in wanted:
                extra = () if name == "loader" else (args.device,)
                results[name] = fn(model_path, train_json, args.repeats, *extra)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


# The children bench_scale measures in fresh processes.
INTERNAL = {
    "_startup": lambda argv: startup(argv[0], argv[1], "--reference" in argv[2:]),
    "_reference-dataset": lambda argv: reference_dataset(Path(argv[0]), Path(argv[1])),
    "_reference-convert": lambda argv: reference_convert(Path(argv[0]), Path(argv[1])),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in INTERNAL:
        INTERNAL[argv[0]](argv[1:])
        return 0
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
