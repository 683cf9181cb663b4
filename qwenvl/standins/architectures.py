"""Qwen3-VL 2B / 4B / 8B built from code with their published config values (random weights,
no download), for benchmarks of real-sized models on machines without the hub."""

from __future__ import annotations

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

# The values of each Instruct model's config.json on the hub that set its shape.
_TEXT = {
    "2b": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
           "num_attention_heads": 16, "tie_word_embeddings": True},
    "4b": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
           "num_attention_heads": 32, "tie_word_embeddings": True},
    "8b": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
           "num_attention_heads": 32, "tie_word_embeddings": False},
}  # fmt: skip
_VISION = {
    "2b": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "out_hidden_size": 2048,
           "deepstack_visual_indexes": [5, 11, 17]},
    "4b": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "out_hidden_size": 2560,
           "deepstack_visual_indexes": [5, 11, 17]},
    "8b": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "out_hidden_size": 4096,
           "deepstack_visual_indexes": [8, 16, 24]},
}  # fmt: skip
# Parameter counts the model cards publish (Qwen/Qwen3-VL-{2B,4B,8B}-Instruct).
PUBLISHED_PARAMETERS = {"2b": 2.13e9, "4b": 4.44e9, "8b": 8.77e9}
NAMES = tuple(_TEXT)


def published_config(name: str, token_ids: dict[str, int] | None = None) -> Qwen3VLConfig:
    """The config of Qwen3-VL-<name>-Instruct; `token_ids` (image_token_id, video_token_id,
    vision_start_token_id, vision_end_token_id) match it to another tokenizer's ids."""
    if name not in _TEXT:
        raise ValueError(f"unknown model config '{name}' (known: {', '.join(NAMES)})")
    text = {
        **_TEXT[name],
        "vocab_size": 151936,
        "head_dim": 128,
        "num_key_value_heads": 8,
        "max_position_embeddings": 262144,
        "rope_theta": 5_000_000,
        "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20],
                         "mrope_interleaved": True},
    }  # fmt: skip
    vision = {
        **_VISION[name],
        "num_heads": 16,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "num_position_embeddings": 2304,
        "hidden_act": "gelu_pytorch_tanh",
    }
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=text["tie_word_embeddings"],
        **(token_ids or {}),
    )


def parameter_count(config: Qwen3VLConfig) -> int:
    """Parameters of the model a config describes, counted without allocating it."""
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())
