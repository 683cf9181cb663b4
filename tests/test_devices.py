"""Precision of trained weights, device choice, the generation budget and the saved processor."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import AutoProcessor
from transformers.video_utils import VideoMetadata

from qwenvl.answer import AnswerFormat
from qwenvl.data.collator import VideoCollator
from qwenvl.data.dataset import SupervisedDataset
from qwenvl.data.samples import load_samples
from qwenvl.inference.transformers_backend import answer_token_budget
from qwenvl.model import load_model, resolve_device
from qwenvl.task import HORIZON_PAIRS
from qwenvl.train.config import LoraSettings, TuneFlags
from qwenvl.train.setup import setup_training
from qwenvl.video import (
    PROCESSOR_VIDEO_KWARGS,
    VideoSettings,
    describe_training_video,
    prepare_clip,
)

PROJECTOR_AND_LLM = TuneFlags(vision=False, mlp=True, llm=True)


@pytest.mark.parametrize("lora", [LoraSettings(r=4, alpha=8), None], ids=["lora", "full"])
def test_bf16_model_trains_fp32_masters_under_autocast(tiny_model_dir, training_dir, lora):
    model = load_model(str(tiny_model_dir), dtype=torch.bfloat16)
    model = setup_training(model, PROJECTOR_AND_LLM, lora, deepspeed=False)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("merger" in n for n in trainable)  # the projector, in full in both modes
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}  # frozen weights are not copied
    # One step as the Trainer runs it with --bf16: autocast over bf16 and fp32 weights.
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    settings = VideoSettings(min_pixels=32 * 32, max_pixels=16 * 32 * 32)
    dataset = SupervisedDataset(
        load_samples([str(training_dir / "train.json")]), processor, settings, 8192
    )
    batch = VideoCollator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in trainable.values() if p.grad is not None]
    assert grads and {g.dtype for g in grads} == {torch.float32}
    # The update that bf16 loses: lr 1e-5 x grad 1 on a weight of 0.02.
    weight = torch.tensor(0.02)
    assert weight.bfloat16() - 1e-5 == weight.bfloat16() and weight - 1e-5 != weight


def test_under_deepspeed_trained_weights_are_left_to_its_own_fp32_copy(tiny_model_dir):
    model = load_model(str(tiny_model_dir), dtype=torch.bfloat16)
    model = setup_training(model, PROJECTOR_AND_LLM, None, deepspeed=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_device_resolution_follows_cuda_and_rejects_what_is_not_there():
    assert resolve_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_inference_loads_onto_the_asked_device_in_its_dtype(tiny_model_dir):
    from qwenvl.inference.spec import read_spec
    from qwenvl.inference.transformers_backend import TransformersBackend

    backend = TransformersBackend.load(read_spec(str(tiny_model_dir)), device="cpu")
    assert backend.model.device == torch.device("cpu") and backend.model.dtype == torch.float32
    assert "on cpu" in backend.describe()


@pytest.mark.parametrize("decimals", [(1, 3), (2, 4), (3, 6)])
def test_generation_budget_fits_the_widest_answer_of_the_format(tiny_model_dir, decimals):
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    fmt = AnswerFormat(*decimals)
    budget = answer_token_budget(tokenizer, fmt)

    def cost(text: str) -> int:  # the answer and its closing <|im_end|>
        return len(tokenizer(text + "<|im_end|>", add_special_tokens=False).input_ids)

    assert cost(fmt.widest_answer()) <= budget
    rng = random.Random(0)
    for _ in range(200):
        pairs = [(rng.uniform(-99, 99), rng.uniform(-9, 9)) for _ in range(HORIZON_PAIRS)]
        assert cost(fmt.format(pairs)) <= budget
    # The budget grows with the decimals: the 1/3 budget cuts a 2/4 answer short.
    if decimals != (1, 3):
        assert cost(fmt.widest_answer()) > answer_token_budget(tokenizer, AnswerFormat())


def test_answer_format_round_trips_and_rejects_nonsense(tmp_path):
    AnswerFormat(2, 4).save(tmp_path)
    assert AnswerFormat.load(tmp_path) == AnswerFormat(2, 4)
    assert AnswerFormat.load(tmp_path / "missing") is None
    with pytest.raises(ValueError):
        AnswerFormat(-1, 3)
    (tmp_path / "answer_format.json").write_text('{"velocity_decimals": "x"}')
    with pytest.raises(ValueError, match="answer_format.json"):
        AnswerFormat.load(tmp_path)


@pytest.mark.parametrize("seconds", [1, 2])
def test_saved_processor_samples_and_sizes_clips_as_training(tiny_model_dir, tmp_path, seconds):
    settings = VideoSettings(fps=30, min_frames=16, max_frames=32)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    describe_training_video(processor, settings)
    processor.save_pretrained(tmp_path)
    plain = AutoProcessor.from_pretrained(tmp_path).video_processor
    assert plain.fps == 30 and (plain.min_frames, plain.max_frames) == (16, 32)

    frames = np.random.default_rng(0).integers(0, 255, (30 * seconds, 360, 640, 3), np.uint8)
    metadata = VideoMetadata(total_num_frames=len(frames), fps=30.0, width=640, height=360)
    # Plain transformers: the saved config alone decides sampling and size.
    got = plain(videos=[frames], video_metadata=[metadata], return_tensors="pt")
    video, ours_metadata = prepare_clip(frames, 30.0, settings)
    ours = processor.video_processor(
        videos=[video],
        video_metadata=[ours_metadata],
        return_tensors="pt",
        **PROCESSOR_VIDEO_KWARGS,
    )
    assert got["video_grid_thw"].tolist() == ours["video_grid_thw"].tolist()
    expected_t = (30 if seconds == 1 else 32) // 2
    assert got["video_grid_thw"].tolist() == [[expected_t, 22, 40]]  # 640x352 frames


@pytest.mark.parametrize("compile_step", [False, True])
def test_generation_compiles_the_decoding_step_only_when_asked(tiny_model_dir, compile_step):
    """The static KV cache would make transformers compile the decoding step on CUDA in every
    evaluation and prediction process: off unless --compile asks for it."""
    from qwenvl.inference.backend import Request
    from qwenvl.inference.spec import read_spec
    from qwenvl.inference.transformers_backend import TransformersBackend

    backend = TransformersBackend.load(read_spec(str(tiny_model_dir)), compile=compile_step)
    seen = {}
    generate = backend.model.generate

    def recorded(**kwargs):
        seen.update(kwargs)
        return generate(**kwargs)

    backend.model.generate = recorded
    frames = np.zeros((30, 64, 64, 3), dtype=np.uint8)
    backend.answer([Request.single(frames, 30.0, "go")], max_new_tokens=2)
    assert seen["cache_implementation"] == "static"
    assert seen["disable_compile"] is (not compile_step)  # transformers' own switch
