"""Training preprocessing: masked labels, visual token counts, timestamps, trainable parameters."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoProcessor

from qwenvl.data.collator import VideoCollator
from qwenvl.data.dataset import IGNORE_INDEX, SupervisedDataset, TokenCounter, encode_clip
from qwenvl.data.samples import load_samples
from qwenvl.model import load_model
from qwenvl.train.config import LoraSettings, TuneFlags
from qwenvl.train.setup import apply_lora, freeze_for_full
from qwenvl.train.trainer import parameter_groups
from qwenvl.video import VideoSettings, decode_video, frame_size, visual_token_count


@pytest.fixture(scope="module")
def dataset(tiny_model_dir, training_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    samples = load_samples([str(training_dir / "train.json")])
    return SupervisedDataset(samples, processor, VideoSettings(), max_length=4096)


def test_labels_decode_to_exactly_the_answer_and_im_end(dataset):
    item = dataset[0]
    labelled = item["labels"][item["labels"] != IGNORE_INDEX]
    text = dataset.processor.tokenizer.decode(labelled)
    assert text == dataset.samples[0]["conversations"][1]["value"] + "<|im_end|>"
    # The labelled tokens are one contiguous block at the end, before the final newline.
    positions = (item["labels"] != IGNORE_INDEX).nonzero().flatten()
    assert (
        positions[-1] - positions[0] + 1
        == len(labelled)
        == len(item["input_ids"]) - 1 - positions[0]
    )


def test_visual_tokens_match_the_hand_computation(dataset):
    # 160x96 segments, per-frame bounds 128..256 x 32x32 pixels: 96*160 = 15360 pixels is under
    # the minimum, so frames grow by sqrt(131072 / 15360) to 288 x 480 (ceil to multiples of 32).
    settings = VideoSettings()
    assert frame_size(96, 160, settings) == (288, 480)
    expected = 15 * (288 // 32) * (480 // 32)  # 30 frames -> 15 temporal groups
    assert visual_token_count(30, 96, 160, settings) == expected == 2025
    item = dataset[0]
    assert item["video_grid_thw"].tolist() == [[15, 288 // 16, 480 // 16]]
    video_pad = dataset.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert int((item["input_ids"] == video_pad).sum()) == expected
    # A 64-token pixel budget shrinks 640x360 by sqrt(230400 / 65536) = 1.875 to 341x192,
    # floored to multiples of 32: 320x192, i.e. 10 x 6 tokens per temporal group.
    small = VideoSettings(min_pixels=32 * 32, max_pixels=64 * 32 * 32)
    assert frame_size(360, 640, small) == (192, 320)
    assert visual_token_count(30, 360, 640, small) == 15 * 6 * 10


def test_prompt_carries_qwen3_vl_timestamps_for_fps_30(dataset):
    text = dataset.processor.tokenizer.decode(dataset[0]["input_ids"])
    stamps = re.findall(r"<([\d.]+) seconds>", text)
    assert stamps == [f"{(2 * g + 0.5) / 30:.1f}" for g in range(15)]


def test_expected_length_equals_processed_length(dataset):
    for index in range(2):
        assert dataset.expected_length(dataset.samples[index]) == len(dataset[index]["input_ids"])


def test_too_long_samples_are_skipped_and_counted(tiny_model_dir, training_dir, caplog):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    samples = load_samples([str(training_dir / "train.json")])
    short = SupervisedDataset(samples, processor, VideoSettings(), max_length=1000)
    assert len(short) == 0 and short.skipped == len(samples)
    assert f"{len(samples)} of {len(samples)} samples are longer" in caplog.text


def test_collator_pads_right_for_training_and_left_for_generation(dataset):
    items = [dataset[0], dataset[1]]
    items[1] = {
        k: (v[:-5] if k in ("input_ids", "attention_mask", "labels", "mm_token_type_ids") else v)
        for k, v in items[1].items()
    }
    pad = dataset.processor.tokenizer.pad_token_id
    batch = VideoCollator(pad)(items)
    assert batch["input_ids"][1, -5:].tolist() == [pad] * 5
    assert batch["labels"][1, -5:].tolist() == [IGNORE_INDEX] * 5
    assert batch["attention_mask"][1, -5:].tolist() == [0] * 5
    assert batch["video_grid_thw"].shape == (2, 3)
    left = VideoCollator(pad, padding_side="left")(items)
    assert left["input_ids"][1, :5].tolist() == [pad] * 5


FLAG_CASES = [
    (TuneFlags(False, True, True), {"mlp", "llm"}),
    (TuneFlags(True, False, False), {"vision"}),
    (TuneFlags(True, True, True), {"vision", "mlp", "llm"}),
    (TuneFlags(False, True, False), {"mlp"}),
    (TuneFlags(False, False, True), {"llm"}),
]


def _trainable_parts(model) -> set[str]:
    from qwenvl.train.setup import component

    return {component(n) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("flags, parts", FLAG_CASES)
def test_full_fine_tuning_trains_exactly_the_flagged_parts(tiny_model_dir, flags, parts):
    model = load_model(str(tiny_model_dir))
    freeze_for_full(model, flags)
    assert _trainable_parts(model) == parts
    every = {n for n, _ in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if parts == {"vision", "mlp", "llm"}:
        assert trainable == every


@pytest.mark.parametrize("flags, parts", FLAG_CASES)
def test_lora_trains_adapters_on_flagged_parts_and_the_projector_in_full(
    tiny_model_dir, flags, parts
):
    model = apply_lora(load_model(str(tiny_model_dir)), flags, LoraSettings(r=4, alpha=8))
    assert _trainable_parts(model) == parts
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".visual.merger" in name or "deepstack_merger_list" in name:
            assert "lora_" not in name  # the projector trains in full
        else:
            assert "lora_A" in name or "lora_B" in name
    if flags.llm or flags.vision:
        assert any("lora_A" in n for n, p in model.named_parameters() if p.requires_grad)


def test_optimizer_groups_carry_per_module_learning_rates(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    freeze_for_full(model, TuneFlags(True, True, True))
    groups = parameter_groups(model, lr=1e-5, weight_decay=0.1, projector_lr=1e-4, vision_lr=2e-6)
    by_name = {g["group_name"]: g for g in groups}
    assert by_name["mlp"]["lr"] == 1e-4 and by_name["vision"]["lr"] == 2e-6
    assert by_name["llm"]["lr"] == 1e-5 and by_name["llm_no_decay"]["weight_decay"] == 0.0
    grouped = sum(len(g["params"]) for g in groups)
    assert grouped == sum(1 for p in model.parameters() if p.requires_grad)
    ids = {id(p) for n, p in model.named_parameters() if "visual.merger" in n}
    assert ids <= {id(p) for p in by_name["mlp"]["params"]} | {
        id(p) for p in by_name["mlp_no_decay"]["params"]
    }
    assert torch.optim.AdamW(groups).param_groups[0]["lr"] in (1e-5, 1e-4, 2e-6)


@pytest.mark.parametrize(
    "settings",
    [
        VideoSettings(),  # 160x96 frames grow to the 128 x 32x32-pixel minimum
        VideoSettings(min_pixels=32 * 32, max_pixels=16 * 32 * 32),
        VideoSettings(fps=15, min_frames=4, max_frames=32),  # every other frame
    ],
    ids=["default", "small", "half-rate"],
)
def test_lengths_from_the_stored_layout_equal_the_processors_count(
    tiny_model_dir, training_dir, settings
):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    samples = load_samples([str(training_dir / "train.json")])
    counter = TokenCounter(processor, settings)
    real = []
    for sample in samples:
        frames, fps = decode_video(sample["video"], settings)
        text = counter.chat_text(sample)
        real.append(len(encode_clip(processor, frames, fps, text, settings)["input_ids"][0]))
        assert counter.length(sample) == real[-1]  # from the record: frames, width, height
        without = {k: v for k, v in sample.items() if k not in ("frames", "width", "height")}
        assert counter.length(without) == real[-1]  # from the video's header
    bounds = counter.bounds(samples)
    assert (bounds >= real).all() and (bounds - real).max() < 1000  # bytes bound tokens
    # A limit between the lengths: exactly the longer samples are left out, as before.
    limit = sorted(real)[len(real) // 2]
    dataset = SupervisedDataset(samples, processor, settings, max_length=limit)
    assert dataset.skipped == sum(n > limit for n in real) > 0
    assert len(dataset) == sum(n <= limit for n in real)
    assert all(counter.length(s) <= limit for s in dataset.samples)


def test_video_pixels_cross_the_dataloader_in_the_training_dtype(dataset):
    items = [dataset[0], dataset[1]]
    pad = dataset.processor.tokenizer.pad_token_id
    assert VideoCollator(pad)(items)["pixel_values_videos"].dtype == torch.float32
    half = VideoCollator(pad, pixel_dtype=torch.bfloat16)(items)["pixel_values_videos"]
    full = VideoCollator(pad)(items)["pixel_values_videos"]
    assert half.dtype == torch.bfloat16 and half.element_size() * 2 == full.element_size()
    torch.testing.assert_close(half.float(), full, atol=0.01, rtol=0.01)
