#!/usr/bin/env python
"""Measure the pipeline's speed against the naive way of doing the same work, on the same inputs.

prep: seconds per 20 s source clip, ours (decode once) against reopen-and-seek per segment with
OpenCV mp4v at full resolution, and the pure decode time as the floor. loader: training samples
per second per DataLoader worker against qwen-vl-utils + processor in the main process. train:
tokens/s and s/step of the tiny model (on CUDA: a Qwen3-VL-4B-shaped model with random weights,
LoRA and full). generate: evaluation tokens/s, batched against one sample at a time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
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
        "what", choices=["prep", "loader", "train", "generate", "all"], help="which benchmark"
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


def prepare_inputs(work: Path, model_path: str | None) -> tuple[str, Path]:
    """A tiny model (unless given) and training JSON from 2 synthetic 640x360 clips."""
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
    if not training.exists():
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


def bench_train(
    model_path: str, train_json: Path, repeats: int, device: str | None, steps: int = 4
) -> dict:
    import torch
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
        load_samples([str(train_json)])[:8], processor, VideoSettings(), 32768
    )
    batch = VideoCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(2)])
    results = {
        "device": str(target),
        "tokens_per_step": int(batch["attention_mask"].sum()),
    }
    for mode in ("lora", "full"):
        # As train.py sets it up: bf16 weights on GPU, fp32 trained parameters, bf16 autocast.
        model = load_model(model_path, device=target)
        lora = LoraSettings() if mode == "lora" else None
        model = setup_training(model, TuneFlags(False, True, True), lora, deepspeed=False)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.train()
        device_batch = {k: v.to(target) for k, v in batch.items()}
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        autocast = torch.autocast(target.type, torch.bfloat16, enabled=target.type == "cuda")

        def step(model=model, optimizer=optimizer, device_batch=device_batch, autocast=autocast):
            for _ in range(steps):
                with autocast:
                    loss = model(**device_batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        step()  # warm-up
        seconds = best_time(step, repeats) / steps
        results[mode] = {
            "s_per_step": seconds,
            "tokens_per_s": results["tokens_per_step"] / seconds,
        }
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


def constrained_vs_free(loaded, inputs: dict, repeats: int) -> dict:
    """Tokens/s of one batched generate() on the same clips, answers constrained to the grammar
    (xgrammar masks every step) and free; each counts the tokens it generated up to <|im_end|>."""
    import torch
    from xgrammar.contrib.hf import LogitsProcessor

    from qwenvl.inference.generate import answer_token_budget

    tokenizer = loaded.processor.tokenizer
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    budget = answer_token_budget(tokenizer, loaded.answer_format, constrained=True)
    prompt = inputs["input_ids"].shape[1]
    result = {}
    for mode in ("constrained", "free"):
        counted = []

        def run(mode=mode, counted=counted):
            processors = [LogitsProcessor(loaded.answer_grammar)] if mode == "constrained" else []
            out = loaded.model.generate(
                **inputs,
                max_new_tokens=budget,
                do_sample=False,
                cache_implementation="static",
                logits_processor=processors,
            )[:, prompt:]
            stops = out == stop
            ends = torch.where(stops.any(dim=1), stops.int().argmax(dim=1) + 1, out.shape[1])
            counted[:] = ends.tolist()

        seconds = best_time(run, repeats)
        result[f"{mode}_tokens_per_s"] = sum(counted) / seconds
        result[f"{mode}_tokens_per_answer"] = sum(counted) / len(counted)
    result["constrained_over_free_tokens_per_s"] = (
        result["constrained_tokens_per_s"] / result["free_tokens_per_s"]
    )
    return result


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
    from qwenvl.train.setup import parameter_counts, setup_training
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
                row = {"attention": attention, "mode": mode, "batch": batch_size}
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(target)
                try:
                    model = Qwen3VLForConditionalGeneration._from_config(
                        config, dtype=torch.bfloat16, attn_implementation=attention
                    ).to(target)
                    lora = LoraSettings() if mode == "lora" else None
                    model = setup_training(model, TuneFlags(False, True, True), lora, False)
                    model.gradient_checkpointing_enable({"use_reentrant": False})
                    model.enable_input_require_grads()
                    batch = collate([dataset[i % len(dataset)] for i in range(batch_size)])
                    batch = {k: v.to(target) for k, v in batch.items()}
                    trained = [p for p in model.parameters() if p.requires_grad]
                    optimizer = torch.optim.AdamW(trained, lr=1e-5)

                    def step(model=model, batch=batch, optimizer=optimizer):
                        with torch.autocast("cuda", torch.bfloat16):
                            loss = model(**batch).loss
                        loss.backward()
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        torch.cuda.synchronize()

                    step()  # warm-up
                    seconds = best_time(step, repeats)
                    tokens_per_step = int(batch["attention_mask"].sum())
                    flops = estimated_flops(tokens_per_step, *parameter_counts(model))
                    row.update(
                        s_per_step=seconds,
                        tokens_per_s=tokens_per_step / seconds,
                        samples_per_s=batch_size / seconds,
                        mfu=flops / seconds / (peak * 1e12) if peak else None,
                        peak_memory_gib=torch.cuda.max_memory_allocated(target) / 1024**3,
                    )
                except torch.cuda.OutOfMemoryError:
                    row["result"] = "out of memory"
                finally:
                    model = optimizer = batch = None
                rows.append(row)
    result["steps"] = rows
    return result


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
    if set(wanted) & {"loader", "train", "generate"}:
        model_path, train_json = prepare_inputs(work, args.model_path)
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


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
