"""loader: training samples per second per DataLoader worker, ours (our decoder, sized while
decoding, through our dataset) against qwen-vl-utils and the processor in the main process."""

from __future__ import annotations

from pathlib import Path

from qwenvl.bench.common import best_time


def bench_loader(model_path: str, train_json: Path, repeats: int) -> dict:
    import torch
    from transformers import AutoProcessor

    from qwenvl.bench.reference import qwen_vl_utils_samples
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
        qwen_vl_utils_samples(samples, processor, settings)

    result["reference_samples_per_s_main_process"] = len(samples) / best_time(reference, repeats)
    result["ours_1_worker_over_reference"] = (
        result["ours_samples_per_s_workers_1"] / result["reference_samples_per_s_main_process"]
    )
    return result
