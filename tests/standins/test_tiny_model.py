"""The tiny Qwen3-VL: renders video prompts as the real processor does, and trains."""

from __future__ import annotations

import re

import numpy as np
import torch
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
from transformers.video_utils import VideoMetadata

from qwenvl.answer import format_pairs
from qwenvl.chat import INSTRUCTION, model_messages


def _clip(frames=30, height=96, width=160):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8)


def _process_at_30_fps(processor, text: str):
    """The processor on a 30-frame clip whose metadata says 30 FPS, as the pipeline calls it."""
    metadata = VideoMetadata(
        total_num_frames=30,
        fps=30.0,
        width=160,
        height=96,
        duration=1.0,
        frames_indices=list(range(30)),
    )
    return processor(
        text=[text],
        videos=[_clip()],
        video_metadata=[metadata],
        return_tensors="pt",
        do_sample_frames=False,
    )


def test_loads_offline_with_expected_shape(tiny_model_dir):
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    config = model.config
    assert config.text_config.num_hidden_layers == 2
    assert config.vision_config.depth == 2
    assert list(config.vision_config.deepstack_visual_indexes) == [0, 1]
    assert 0.5e6 < model.num_parameters() < 2e6
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    tok = processor.tokenizer
    specials = (
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|video_pad|>",
        "<|image_pad|>",
    )
    ids = [tok.convert_tokens_to_ids(s) for s in specials]
    assert None not in ids and len(set(ids)) == len(specials)
    for special in specials:
        assert tok.tokenize(special) == [special]
        assert tok.decode(tok.convert_tokens_to_ids([special])) == special
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    # Qwen's pre-tokenizer splits digits one by one.
    assert tok.tokenize("123") == ["1", "2", "3"]


def test_chat_template_renders_like_qwen3_vl(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        *model_messages("Hi?", "[(1.0, 0.000)]"),
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Hi?<|im_end|>\n"
        "<|im_start|>assistant\n[(1.0, 0.000)]<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(
        model_messages("Hi?"), add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    assert "<|vision_start|><|image_pad|><|vision_end|>x" in processor.apply_chat_template(
        image, tokenize=False
    )


def test_30_frames_at_fps_30_give_15_timestamped_groups(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    text = processor.apply_chat_template(
        model_messages(INSTRUCTION), add_generation_prompt=True, tokenize=False
    )
    inputs = _process_at_30_fps(processor, text)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert t == 15
    per_group = h * w // 4
    decoded = processor.tokenizer.decode(inputs["input_ids"][0])
    # Qwen3-VL timestamps: the mean time of each pair of frames, at the clip's real fps.
    stamps = [(2 * g / 30 + (2 * g + 1) / 30) / 2 for g in range(15)]
    groups = "".join(
        f"<{s:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_group + "<|vision_end|>"
        for s in stamps
    )
    # The pinned processor expands <|video_pad|> in place, inside the template's own markers.
    expected = f"<|im_start|>user\n<|vision_start|>{groups}<|vision_end|>{INSTRUCTION}<|im_end|>\n"
    assert decoded == expected + "<|im_start|>assistant\n"
    assert re.findall(r"<([\d.]+) seconds>", decoded)[:4] == ["0.0", "0.1", "0.1", "0.2"]


def test_without_fps_metadata_the_processor_assumes_24(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    text = processor.apply_chat_template(model_messages(INSTRUCTION), tokenize=False)
    inputs = processor(text=[text], videos=[_clip()], return_tensors="pt", do_sample_frames=False)
    stamps = re.findall(r"<([\d.]+) seconds>", processor.tokenizer.decode(inputs["input_ids"][0]))
    assert stamps[-1] == f"{(28 / 24 + 29 / 24) / 2:.1f}"  # 1.2 s, not 0.9 s


def test_one_training_step_reaches_vision_and_llm(tiny_model_dir):
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    answer = format_pairs([(10.0, 0.01)] * 30)
    text = processor.apply_chat_template(model_messages(INSTRUCTION, answer), tokenize=False)
    inputs = _process_at_30_fps(processor, text)
    out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(".visual.blocks." in n and g.abs().sum() > 0 for n, g in grads.items())
    assert any(".visual.patch_embed." in n and g.abs().sum() > 0 for n, g in grads.items())
    assert any(".language_model.layers." in n and g.abs().sum() > 0 for n, g in grads.items())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.model.visual.patch_embed.proj.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.model.visual.patch_embed.proj.weight)
