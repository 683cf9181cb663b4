"""The training dataset: training-format samples to model tensors through the Qwen3-VL processor,
with labels on the answer only, and samples too long for the model left out up front."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from qwenvl.chat import sample_messages
from qwenvl.video import (
    PROCESSOR_VIDEO_KWARGS,
    VideoSettings,
    decode_video,
    frame_size,
    prepare_clip,
    sample_indices,
)

IGNORE_INDEX = -100
logger = logging.getLogger(__name__)


def encode_clip(processor, frames: np.ndarray, fps: float, text: str, settings: VideoSettings):
    """Processor output (tensors, batch of 1) for one clip and the chat text that holds it."""
    video, metadata = prepare_clip(frames, fps, settings)
    return processor(
        text=[text],
        videos=[video],
        video_metadata=[metadata],
        return_tensors="pt",
        **PROCESSOR_VIDEO_KWARGS,
    )


def answer_mask(input_ids: torch.Tensor, header_ids: list[int], im_end_id: int) -> torch.Tensor:
    """True on the assistant answer and its closing <|im_end|>, False everywhere else."""
    ids = input_ids.tolist()
    n = len(header_ids)
    start = next((i + n for i in range(len(ids) - n, -1, -1) if ids[i : i + n] == header_ids), None)
    if start is None:
        raise ValueError("no assistant turn in the sample")
    end = ids.index(im_end_id, start)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[start : end + 1] = True
    return mask


class SampleTooLong(ValueError):
    """A sample longer than model_max_length: skipped whole, never cut through visual tokens."""


@dataclass
class VideoTokenLayout:
    """What a clip costs in tokens, known from its header without decoding it."""

    frames: int
    height: int
    width: int
    fps: float


def probe_video(path: str | Path) -> VideoTokenLayout:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for _ in container.demux(stream) if _.size)
        rate = stream.average_rate or stream.guessed_rate or 30
        return VideoTokenLayout(frames, stream.height, stream.width, float(rate))


class SupervisedDataset(Dataset):
    """Training-format samples -> input_ids, attention_mask, labels, video pixels and grid.

    Samples whose length would exceed `max_length` are found up front from the video headers,
    reported with their count, and left out.
    """

    def __init__(self, samples: list[dict], processor, settings: VideoSettings, max_length: int):
        self.processor = processor
        self.settings = settings
        self.max_length = max_length
        tokenizer = processor.tokenizer
        self.header_ids = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        lengths = [self.expected_length(sample) for sample in samples]
        self.samples = [s for s, n in zip(samples, lengths, strict=True) if n <= max_length]
        self.skipped = len(samples) - len(self.samples)
        if self.skipped:
            logger.warning(
                "%d of %d samples are longer than model_max_length=%d and are skipped; raise "
                "--model_max_length or lower VIDEO_MAX_PIXELS / VIDEO_MAX_FRAMES",
                self.skipped,
                len(samples),
                max_length,
            )

    def chat_text(self, sample: dict) -> str:
        return self.processor.apply_chat_template(sample_messages(sample, True), tokenize=False)

    def expected_length(self, sample: dict) -> int:
        """Token count of the processed sample, computed as the processor expands the video."""
        layout = probe_video(sample["video"])
        fps = float(sample.get("fps") or layout.fps)
        indices = sample_indices(layout.frames, fps, self.settings)
        h, w = frame_size(layout.height, layout.width, self.settings)
        per_group = (h // 32) * (w // 32)
        timestamps = self.processor._calculate_timestamps(indices.tolist(), fps, 2)
        stamp_tokens = sum(
            len(self.processor.tokenizer(f"<{t:.1f} seconds>", add_special_tokens=False).input_ids)
            for t in timestamps
        )
        text_tokens = len(self.processor.tokenizer(self.chat_text(sample)).input_ids) - 1
        return text_tokens + stamp_tokens + len(timestamps) * (per_group + 2)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        frames, video_fps = decode_video(sample["video"], self.settings)
        fps = float(sample.get("fps") or video_fps)
        inputs = encode_clip(self.processor, frames, fps, self.chat_text(sample), self.settings)
        input_ids = inputs["input_ids"][0]
        if len(input_ids) > self.max_length:
            raise SampleTooLong(f"{sample['video']}: {len(input_ids)} tokens > {self.max_length}")
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        mask = answer_mask(input_ids, self.header_ids, self.im_end_id)
        labels[mask] = input_ids[mask]
        return {
            "input_ids": input_ids,
            "attention_mask": inputs["attention_mask"][0],
            "mm_token_type_ids": inputs["mm_token_type_ids"][0],
            "labels": labels,
            "pixel_values_videos": inputs["pixel_values_videos"],
            "video_grid_thw": inputs["video_grid_thw"],
        }
