"""scale: the dataset steps and a rank's training start-up on a manifest of N segments (a small
synthetic manifest replicated, every row's video a real segment), ours against the way before
(reference), each a fresh process measured for time and peak memory."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from qwenvl.bench.common import SCRIPTS, measured, run_scripts

BENCHMARK = SCRIPTS / "benchmark.py"  # its internal commands run the measured children


def scaled_segments(work: Path, segments: int) -> Path:
    """A segments folder of `segments` rows: the manifest of 4 synthetic 20 s clips (76
    segments at 640x360) replicated, each copy of a clip under a new clip_id (so splits stay by
    clip), every row's video one of the real segment files."""
    import pandas as pd

    from qwenvl.layout import MANIFEST, MANIFEST_ROW_GROUP, RAW_SOURCE

    base = work / "scale_base"
    if not (base / "segments" / MANIFEST).is_file():
        run_scripts(
            [
                ("make_synthetic_data.py", ["--output-dir", base / "raw", "--num-clips", "4",
                                            "--seed", "2", "--no-progress"]),
                ("prepare_video_segments.py", ["--data-dir", base / "raw", "--output-dir",
                                               base / "segments"]),
            ]
        )  # fmt: skip
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
    (out / RAW_SOURCE).write_text((base / "segments" / RAW_SOURCE).read_text())
    return out


def bench_scale(work: Path, segments: int, model_path: str, reference: bool) -> dict:
    """The dataset steps and a rank's training start-up on a manifest of `segments` rows, ours
    and (with `reference`) the way before: a row at a time into Python objects, and a start-up
    that opened every video for its length."""
    here, scripts = BENCHMARK, SCRIPTS
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
        from qwenvl.bench.reference import ReferenceDataset

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
