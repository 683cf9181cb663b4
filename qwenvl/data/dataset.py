"""The training dataset: training-format samples to model tensors through the Qwen3-VL processor,
with labels on the answer only; samples that cannot train, or too long for the model, left out
up front from the stored columns, and samples whose video fails while training named, counted
and stood in for."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from qwenvl.chat import sample_messages
from qwenvl.task import CLIP_FPS
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


class SampleError(ValueError):
    """A sample that cannot be trained on, found as it is read (its video does not decode, holds
    fewer frames than it claims, or comes out too long); str() is the cause."""


class BadTrainingData(ValueError):
    """No sample is left to train on, or more than the allowed share is bad."""


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
        rate = stream.average_rate or stream.guessed_rate or CLIP_FPS
        return VideoTokenLayout(frames, stream.height, stream.width, float(rate))


class TokenCounter:
    """A sample's token count as the processor will make it, from its video's layout (frames,
    size, fps) and its text, without decoding the video.

    The text's exact count needs the tokenizer; its UTF-8 size bounds it (a byte-level BPE token
    is at least one byte), so in bulk only samples whose bound passes the limit are tokenised.
    """

    def __init__(self, processor, settings: VideoSettings) -> None:
        self.processor, self.settings = processor, settings
        self._visual: dict[tuple, int] = {}
        self.template_bytes = self._template_bytes()

    def chat_text(self, sample: dict) -> str:
        return self.processor.apply_chat_template(sample_messages(sample, True), tokenize=False)

    def visual(self, frames: int, height: int, width: int, fps: float) -> int:
        """Tokens the video takes in the sequence: per temporal group its patches, its
        "<t seconds>" stamp and the two vision markers."""
        key = (int(frames), int(height), int(width), float(fps))
        if key not in self._visual:
            indices = sample_indices(key[0], key[3], self.settings)
            h, w = frame_size(key[1], key[2], self.settings)
            per_group = (h // 32) * (w // 32)
            tokenizer = self.processor.tokenizer
            stamps = self.processor._calculate_timestamps(indices.tolist(), key[3], 2)
            stamp_tokens = sum(
                len(tokenizer(f"<{t:.1f} seconds>", add_special_tokens=False).input_ids)
                for t in stamps
            )
            self._visual[key] = stamp_tokens + len(stamps) * (per_group + 2)
        return self._visual[key]

    def text(self, sample: dict) -> int:
        """Exact tokens of the chat text, its one video placeholder not counted."""
        return len(self.processor.tokenizer(self.chat_text(sample)).input_ids) - 1

    def _template_bytes(self) -> int | None:
        """Bytes the chat template adds around the user text and the answer; None when that
        is not a constant (a template that rewrites the text): then every text is tokenised."""
        sizes = set()
        for user, answer in (("u", "a"), ("user text", "a longer answer")):
            sample = {"conversations": [{"value": user}, {"value": answer}]}
            sizes.add(len(self.chat_text(sample).encode()) - len(user) - len(answer))
        return sizes.pop() if len(sizes) == 1 else None

    def length(self, sample: dict) -> int:
        """Exact token count of the processed sample (the video layout from the sample's
        record, or from its video's header for a sample without one)."""
        if sample.get("frames") and sample.get("width") and sample.get("height"):
            layout = VideoTokenLayout(
                sample["frames"], sample["height"], sample["width"], sample.get("fps") or CLIP_FPS
            )
        else:
            layout = probe_video(sample["video"])
        fps = float(sample.get("fps") or layout.fps)
        return self.visual(layout.frames, layout.height, layout.width, fps) + self.text(sample)

    def bounds(self, samples) -> np.ndarray:
        """Upper bounds of every sample's token count, in bulk from the stored columns; a
        sample without its video layout gets its exact count (its header is read)."""
        frames, height, width, fps = (
            samples.column(name) for name in ("frames", "height", "width", "fps")
        )
        text = samples.column("user_bytes") + samples.column("answer_bytes")
        bounds = np.empty(len(samples), dtype=np.int64)
        known = (frames > 0) & (height > 0) & (width > 0) & (fps > 0)
        layouts = np.stack([frames, height, width, fps.astype(np.float64)], axis=-1)[known]
        unique, inverse = np.unique(layouts, axis=0, return_inverse=True)
        visual = np.array([self.visual(*row) for row in unique], dtype=np.int64)
        if self.template_bytes is None:
            bounds[known] = visual[inverse.reshape(-1)] + [
                self.text(samples[i]) for i in np.flatnonzero(known)
            ]
        else:
            bounds[known] = visual[inverse.reshape(-1)] + self.template_bytes + text[known]
        for i in np.flatnonzero(~known):
            bounds[i] = self.length(samples[i])
        return bounds


class SupervisedDataset(Dataset):
    """Training-format samples -> input_ids, attention_mask, labels, video pixels and grid.

    At start-up, from the stored columns and without opening a video: a sample that cannot
    train (qwenvl.data.samples.sample_problem) is named and left out, and so is one whose
    length would exceed `max_length`; each with its count. While training, a sample whose
    video fails to decode, or decodes fewer frames than it claims, is named, counted and
    replaced by the next sample: never a crash hours in.
    """

    def __init__(
        self,
        samples,
        processor,
        settings: VideoSettings,
        max_length: int,
        max_bad_share: float = 1.0,
    ):
        self.processor = processor
        self.settings = settings
        self.max_length = max_length
        tokenizer = processor.tokenizer
        self.header_ids = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.counter = TokenCounter(processor, settings)
        self.excluded = self._checked(samples, max_bad_share)
        good = np.ones(len(samples), dtype=bool)
        good[list(self.excluded)] = False
        self.excluded = {samples[i]["id"]: why for i, why in self.excluded.items()}
        self.samples = samples.subset(np.flatnonzero(good))
        self.skipped = self._drop_too_long()
        self._bad: set[int] = set()  # this process's samples that failed while training

    def _checked(self, samples, max_bad_share: float) -> dict[int, str]:
        """Sample positions that cannot train -> why, each named in the log."""
        problems = samples.column("problem", fill=None)
        bad = {int(i): str(problems[i]) for i in np.flatnonzero(problems != None)}  # noqa: E711
        for count, (i, why) in enumerate(sorted(bad.items())):
            if count < 20:
                logger.warning("left out sample %s: %s", samples[i]["id"], why)
        if bad:
            logger.warning("%d of %d samples cannot train and are left out", len(bad), len(samples))
        if len(samples) and len(bad) / len(samples) > max_bad_share:
            first = min(bad)
            raise BadTrainingData(
                f"{len(bad)} of {len(samples)} samples cannot train, more than "
                f"--max_bad_samples {max_bad_share:g} allows; the first, "
                f"{samples[first]['id']}: {bad[first]}"
            )
        return bad

    def _drop_too_long(self) -> int:
        """Leave out samples longer than max_length; only those whose bound passes it are
        tokenised."""
        bounds = self.counter.bounds(self.samples)
        keep = bounds <= self.max_length
        for i in np.flatnonzero(~keep):
            keep[i] = self.counter.length(self.samples[i]) <= self.max_length
        skipped = int((~keep).sum())
        if skipped:
            logger.warning(
                "%d of %d samples are longer than model_max_length=%d and are skipped; raise "
                "--model_max_length or lower VIDEO_MAX_PIXELS / VIDEO_MAX_FRAMES",
                skipped,
                len(self.samples),
                self.max_length,
            )
            self.samples = self.samples.subset(np.flatnonzero(keep))
        return skipped

    def check_not_empty(self) -> None:
        """BadTrainingData when no sample is left to train on."""
        if not len(self.samples):
            raise BadTrainingData(
                "no training sample fits model_max_length"
                if not self.excluded
                else f"no training sample is left ({len(self.excluded)} cannot train, "
                f"{self.skipped} longer than model_max_length)"
            )

    def chat_text(self, sample: dict) -> str:
        return self.counter.chat_text(sample)

    def expected_length(self, sample: dict) -> int:
        """Token count of the processed sample, computed as the processor expands the video."""
        return self.counter.length(sample)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        """The sample's tensors; a sample that fails is named and counted in the item's
        "skipped" (the collator gathers them for the trainer), and the next one stands in."""
        skipped = []
        for attempt in range(len(self)):
            position = (index + attempt) % len(self)
            if position in self._bad:
                continue
            sample = self.samples[position]
            try:
                item = self.encode(sample)
            except SampleError as err:
                self._bad.add(position)
                logger.warning("skipping sample %s (%s): %s", sample["id"], sample["video"], err)
                skipped.append((sample["id"], str(err)))
                continue
            item["skipped"] = skipped
            return item
        raise BadTrainingData("every training sample failed to decode (see the lines above)")

    def encode(self, sample: dict) -> dict[str, torch.Tensor]:
        try:
            frames, video_fps = decode_video(sample["video"], self.settings)
        except (OSError, ValueError, av.error.FFmpegError) as err:
            raise SampleError(f"video does not decode ({str(err).splitlines()[0]})") from None
        claimed = sample.get("frames")
        if claimed and len(frames) < claimed:
            raise SampleError(f"video decodes {len(frames)} of the {claimed} frames it claims")
        fps = float(sample.get("fps") or video_fps)
        inputs = encode_clip(self.processor, frames, fps, self.chat_text(sample), self.settings)
        input_ids = inputs["input_ids"][0]
        if len(input_ids) > self.max_length:
            raise SampleError(f"{len(input_ids)} tokens > model_max_length {self.max_length}")
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
