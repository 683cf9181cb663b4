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

from qwenvl import record
from qwenvl.chat import VIDEO_TAG, sample_messages
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
    return encode_views(processor, [(frames, fps)], text, settings)


def encode_views(processor, views: list, text: str, settings: VideoSettings):
    """Processor output (tensors, batch of 1) for a segment's views ((frames, fps) each, in the
    order of the chat text's clips), each sampled and sized with its own settings."""
    prepared = [
        prepare_clip(frames, fps, settings.for_view(i)) for i, (frames, fps) in enumerate(views)
    ]
    videos, metadata = zip(*prepared, strict=True)
    return processor(
        text=[text],
        videos=list(videos),
        video_metadata=list(metadata),
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
        self._template: dict[int, int | None] = {}
        self.template_bytes = self._template_bytes(1)

    def chat_text(self, sample: dict) -> str:
        return self.processor.apply_chat_template(sample_messages(sample, True), tokenize=False)

    def visual(self, frames: int, height: int, width: int, fps: float, view: int = 0) -> int:
        """Tokens a view's video takes in the sequence: per temporal group its patches, its
        "<t seconds>" stamp and the two vision markers (view 0 at the segments' camera's
        settings, the others at the other cameras')."""
        key = (int(frames), int(height), int(width), float(fps), min(int(view), 1))
        if key not in self._visual:
            settings = self.settings.for_view(key[4])
            indices = sample_indices(key[0], key[3], settings)
            h, w = frame_size(key[1], key[2], settings)
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
        """Exact tokens of the chat text, its video placeholders (one per view) not counted."""
        ids = self.processor.tokenizer(self.chat_text(sample)).input_ids
        return len(ids) - record.view_count(sample)

    def _template_bytes(self, views: int) -> int | None:
        """Bytes the chat template adds around a user turn of `views` clips and the answer;
        None when that is not a constant (a template that rewrites the text): then every text
        is tokenised."""
        if views not in self._template:
            sizes = set()
            for user, answer in (("u", "a"), ("user text", "a longer answer")):
                human = "\n".join([VIDEO_TAG] * views + [user])
                sample = {"conversations": [{"value": human}, {"value": answer}]}
                sizes.add(len(self.chat_text(sample).encode()) - len(human) - len(answer))
            self._template[views] = sizes.pop() if len(sizes) == 1 else None
        return self._template[views]

    def length(self, sample: dict) -> int:
        """Exact token count of the processed sample (the video layouts from the sample's
        record, or from its videos' headers for a sample without them)."""
        if sample.get("frames") and sample.get("width") and sample.get("height"):
            layout = VideoTokenLayout(
                sample["frames"], sample["height"], sample["width"], sample.get("fps") or CLIP_FPS
            )
        else:
            layout = probe_video(sample["video"])
        fps = float(sample.get("fps") or layout.fps)
        visual = self.visual(layout.frames, layout.height, layout.width, fps)
        extra = zip(
            *(sample.get(f"extra_{n}") or () for n in ("frames", "heights", "widths", "fps")),
            strict=True,
        )
        for view, (frames, height, width, rate) in enumerate(extra, start=1):
            visual += self.visual(frames, height, width, rate, view)
        return visual + self.text(sample)

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
        extra_visual, views = self._extra_visual(samples)
        if self.template_bytes is None:
            bounds[known] = visual[inverse.reshape(-1)] + [
                self.text(samples[i]) for i in np.flatnonzero(known)
            ]
        else:
            template = np.array([self._template_bytes(int(k)) or 0 for k in range(views.max() + 1)])
            bounds[known] = visual[inverse.reshape(-1)] + template[views[known]] + text[known]
        bounds += extra_visual
        for i in np.flatnonzero(~known):
            bounds[i] = self.length(samples[i])
        return bounds

    def _extra_visual(self, samples) -> tuple[np.ndarray, np.ndarray]:
        """(visual tokens of every sample's further views, every sample's view count), in bulk
        from the stored list columns."""
        columns = [samples.lists(f"extra_{n}") for n in ("frames", "heights", "widths", "fps")]
        counts = columns[0][1]
        extra = np.zeros(len(samples), dtype=np.int64)
        if counts.any():
            layouts = np.stack([c[0].astype(np.float64) for c in columns], axis=-1)
            unique, inverse = np.unique(layouts, axis=0, return_inverse=True)
            tokens = np.array([self.visual(*row, view=1) for row in unique], dtype=np.int64)
            per_view = tokens[inverse.reshape(-1)]
            owners = np.repeat(np.arange(len(samples)), counts)
            np.add.at(extra, owners, per_view)
        return extra, counts + 1


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
        views = []
        extra = zip(sample.get("extra_videos") or (), sample.get("extra_frames") or (),
                    sample.get("extra_fps") or (), strict=True)  # fmt: skip
        for view, (video, claimed, fps) in enumerate(
            [(sample["video"], sample.get("frames"), sample.get("fps")), *extra]
        ):
            settings = self.settings.for_view(view)
            try:
                frames, video_fps = decode_video(video, settings)
            except (OSError, ValueError, av.error.FFmpegError) as err:
                raise SampleError(f"video does not decode ({str(err).splitlines()[0]})") from None
            if claimed and len(frames) < claimed:
                raise SampleError(f"video decodes {len(frames)} of the {claimed} frames it claims")
            views.append((frames, float(fps or video_fps)))
        inputs = encode_views(self.processor, views, self.chat_text(sample), self.settings)
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
