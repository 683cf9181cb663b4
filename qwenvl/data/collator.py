"""Batch training samples: text fields padded, video fields concatenated, the video pixels in the
training dtype, and the samples the dataset skipped on the way handed on to the trainer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qwenvl.data.dataset import IGNORE_INDEX

SKIPPED = "skipped_samples"  # (id, why) of samples the dataset skipped for this batch


@dataclass
class VideoCollator:
    """Pads text fields (right for training, left for generation) and concatenates video fields.

    `pixel_dtype` (bf16 when training in bf16) sends the pixels across the DataLoader at half
    the size of the processor's fp32: about 77 MiB per clip at the default video settings.
    """

    pad_token_id: int
    padding_side: str = "right"
    pixel_dtype: torch.dtype | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        pixels = torch.cat([f["pixel_values_videos"] for f in features])
        batch = {
            "input_ids": self._pad([f["input_ids"] for f in features], self.pad_token_id),
            "attention_mask": self._pad([f["attention_mask"] for f in features], 0),
            "mm_token_type_ids": self._pad([f["mm_token_type_ids"] for f in features], 0),
            "pixel_values_videos": pixels.to(self.pixel_dtype) if self.pixel_dtype else pixels,
            "video_grid_thw": torch.cat([f["video_grid_thw"] for f in features]),
        }
        if "labels" in features[0]:
            batch["labels"] = self._pad([f["labels"] for f in features], IGNORE_INDEX)
        skipped = [pair for f in features for pair in f.get("skipped", ())]
        if skipped:
            batch[SKIPPED] = skipped
        return batch

    def _pad(self, rows: list[torch.Tensor], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            if self.padding_side == "right":
                out[i, : len(row)] = row
            else:
                out[i, width - len(row) :] = row
        return out
