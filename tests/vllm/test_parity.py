"""The vLLM backend sees what the model was trained on, token for token (`make test-vllm`, which
builds vLLM's environment when needed; `make test` leaves these out). In float32 on the tiny
model: the prompt token ids vLLM builds equal the transformers backend's for video-only,
ego-history and batched prompts; greedy and grammar-constrained answers are the same text; LoRA
adapters (language only, vision tower and language, and one that trains the projector in full,
which is merged first) answer as they do with peft; evaluate.py and the benchmark run on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main

from qwenvl.data.samples import load_samples
from qwenvl.inference.backend import Request
from qwenvl.inference.clips import clip_of
from qwenvl.inference.spec import read_spec
from qwenvl.inference.transformers_backend import TransformersBackend
from qwenvl.inference.vllm_backend import VllmBackend, vllm_python
from qwenvl.video import VideoSettings

try:
    vllm_python()
except ValueError as err:  # the tests need vLLM's environment: make test-vllm builds it
    pytest.skip(str(err), allow_module_level=True)

VIDEO = VideoSettings(min_pixels=32 * 32, max_pixels=16 * 32 * 32)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with small video settings and the prompt stored, as a checkpoint carries
    them."""
    from qwenvl.chat import PromptSettings

    out = tmp_path_factory.mktemp("vllm") / "model"
    shutil.copytree(tiny_model_dir, out)
    VIDEO.save(out)
    PromptSettings().save(out)
    return out


@pytest.fixture(scope="module")
def requests(training_dir) -> list[Request]:
    """Two test clips, a narrower one (a shorter prompt), and one asked with ego history."""
    from qwenvl.chat import PromptSettings, user_text_of

    samples = load_samples([str(training_dir / "test.json")])[:2]
    clips = [clip_of(s, VIDEO) for s in samples]
    texts = [user_text_of(s) for s in samples]
    history = np.stack([np.linspace(8.0, 9.0, 10), np.full(10, 0.012)], axis=-1)
    history_text = PromptSettings(ego_history_seconds=1.0).user_text(history)
    return [
        Request.single(*clips[0], texts[0]),
        Request.single(*clips[1], texts[1]),
        Request.single(clips[0][0][:, :, :64], clips[0][1], texts[0]),
        Request.single(*clips[1], history_text),
    ]


def _backends(path: Path):
    spec = read_spec(str(path))
    return (
        TransformersBackend.load(spec, device="cpu", dtype="fp32"),
        VllmBackend.load(spec, dtype="fp32", max_batch=4),
    )


@pytest.fixture(scope="module")
def base(model_dir):
    transformers, vllm = _backends(model_dir)
    yield transformers, vllm
    vllm.close()


def test_prompt_token_ids_equal_for_video_history_and_batched_prompts(base, requests):
    transformers, vllm = base
    vllm.answer(requests, max_new_tokens=1)
    for request, ids in zip(requests, vllm.last_prompt_ids, strict=True):
        ours = transformers.inputs([request])["input_ids"][0].tolist()
        assert ids == ours and len(ours) > 100
    assert len({len(ids) for ids in vllm.last_prompt_ids}) > 1  # the batch held other lengths
    assert "vLLM on cpu (float32)" in vllm.describe()


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "free"])
def test_answers_equal_the_transformers_backends(base, requests, constrained):
    transformers, vllm = base
    budget = None if constrained else 48
    ours = transformers.answer(requests, constrained, budget)
    theirs = vllm.answer(requests, constrained, budget)
    assert [a.text for a in theirs] == [a.text for a in ours]
    assert [a.prompt_tokens for a in theirs] == [a.prompt_tokens for a in ours]
    assert [a.answer_tokens for a in theirs] == [a.answer_tokens for a in ours]


def test_three_cameras_prompt_ids_and_answers_equal(model_dir, training_dir, tmp_path):
    """A prompt of three cameras' clips, the other cameras at their own budget: vLLM builds the
    prompt transformers builds and gives the same answer."""
    from qwenvl.chat import PromptSettings

    cameras = ("camera_front_wide_120fov", "camera_cross_left_120fov", "camera_cross_right_120fov")
    out = tmp_path / "three"
    shutil.copytree(model_dir, out)
    prompt = PromptSettings(cameras=cameras)
    prompt.save(out)
    samples = load_samples([str(training_dir / "test.json")])[:2]
    side = VIDEO.for_view(1)
    views = (clip_of(samples[0], VIDEO), clip_of(samples[1], side), clip_of(samples[0], side))
    request = Request(views, prompt.human(prompt.user_text()))
    transformers, vllm = _backends(out)
    try:
        vllm.answer([request], max_new_tokens=1)
        ours = transformers.inputs([request])["input_ids"][0].tolist()
        assert vllm.last_prompt_ids[0] == ours
        assert len(transformers.inputs([request])["video_grid_thw"]) == 3
        assert vllm.answer([request])[0].text == transformers.answer([request])[0].text
    finally:
        vllm.close()


def _adapter(model_dir: Path, out: Path, vision: bool, projector: bool) -> Path:
    """A LoRA adapter of the tiny model whose weights move its answers (random, not zero)."""
    from qwenvl.model import load_model
    from qwenvl.train.config import LoraSettings, TuneFlags
    from qwenvl.train.setup import apply_lora

    torch.manual_seed(1)
    model = apply_lora(
        load_model(str(model_dir), dtype=torch.float32),
        TuneFlags(vision=vision, mlp=projector, llm=True),
        LoraSettings(r=8, alpha=16, dropout=0.0),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "vision, projector",
    [(False, False), (True, False), (False, True)],
    ids=["language", "vision_and_language", "with_projector"],
)
def test_a_lora_adapter_answers_as_with_peft(model_dir, requests, tmp_path, vision, projector):
    adapter = _adapter(model_dir, tmp_path / "adapter", vision, projector)
    transformers, vllm = _backends(adapter)
    try:
        ours = [a.text for a in transformers.answer(requests[:2])]
        theirs = [a.text for a in vllm.answer(requests[:2])]
    finally:
        vllm.close()
    base = TransformersBackend.load(read_spec(str(model_dir)), device="cpu", dtype="fp32")
    assert ours != [a.text for a in base.answer(requests[:2])]  # the adapter changes answers
    assert theirs == ours
    merged = tmp_path / "adapter-merged-fp32"
    assert merged.is_dir() == projector  # an adapter that trains the projector: merged first


def test_evaluate_writes_the_same_predictions_with_either_backend(
    model_dir, training_dir, tmp_path
):
    test_json = training_dir / "test.json"
    outputs = {}
    for backend in ("transformers", "vllm"):
        out = tmp_path / backend
        run_main("evaluate", "--model-path", model_dir, "--test-json", test_json, "--dtype",
                 "fp32", "--max-samples", "3", "--backend", backend,
                 "--output-dir", out)  # fmt: skip
        outputs[backend] = out
        assert json.loads((out / "metrics.json").read_text())["backend"] == backend
    predictions = [(outputs[b] / "predictions.jsonl").read_text() for b in outputs]
    assert predictions[0] == predictions[1]


def test_the_benchmark_measures_both_backends_on_the_same_clips(model_dir, tmp_path):
    out = tmp_path / "bench.json"
    run_main("benchmark", "generate", "--backend", "both", "--model-path", model_dir,
             "--work-dir", tmp_path / "work", "--repeats", "1", "--batch", "4",
             "--json", out)  # fmt: skip
    result = json.loads(out.read_text())["generate"]
    for backend in ("transformers", "vllm"):
        assert result[backend]["constrained_tokens_per_s"] > 0
        assert result[backend]["constrained_tokens_per_answer"] > 0
    assert result["vllm_over_transformers_constrained_tokens_per_s"] > 0
