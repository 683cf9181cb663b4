"""Evaluate, predict and merge on models trained here, and the batched generation path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    build_training_json,
    run_main,
    run_script,
    script_main,
    script_module,
    train_in_process,
)
from PIL import Image

from qwenvl.evaluate.overlay import PREDICTED_COLOUR
from qwenvl.standins.motion import constant_profile
from qwenvl.standins.render import encode_mp4
from qwenvl.standins.synthetic import write_synthetic_dataset

SMALL_VIDEO = {"VIDEO_MIN_PIXELS": str(32 * 32), "VIDEO_MAX_PIXELS": str(16 * 32 * 32)}


@pytest.fixture(scope="module")
def steady_data(tmp_path_factory) -> Path:
    """Clips that all drive 8 m/s on curvature 0.01: one answer the tiny model can learn."""
    base = tmp_path_factory.mktemp("steady")
    write_synthetic_dataset(
        base / "raw",
        2,
        clip_seconds=4,
        width=160,
        height=96,
        seed=1,
        profile=constant_profile(8.0, 0.01),
        progress=False,
    )
    run_script(
        "scripts/prepare_video_segments.py",
        "--data-dir",
        str(base / "raw"),
        "--output-dir",
        str(base / "seg"),
    )
    build_training_json(base / "seg", base)  # 2 clips: the index puts one in test
    return base


def _train(kind: str, model, data: Path, out: Path, **extra) -> Path:
    env = {
        "MODEL_PATH": str(model),
        "DATASETS": str(data / "training" / "train.json"),
        "OUTPUT_DIR": str(out),
        "BATCH_SIZE": "3",
        "GRAD_ACCUM": "1",
        "DATALOADER_WORKERS": "0",
        **SMALL_VIDEO,
        **{k: str(v) for k, v in extra.items()},
    }
    train_in_process(kind, env)
    return out


@pytest.fixture(scope="module")
def fine_tuned(tiny_model_dir, steady_data, tmp_path_factory) -> Path:
    """A full fine-tune (no DeepSpeed) that answers the steady clips with 30 exact pairs."""
    out = tmp_path_factory.mktemp("full") / "model"
    return _train(
        "full",
        tiny_model_dir,
        steady_data,
        out,
        DEEPSPEED_CONFIG="",
        MAX_STEPS=50,
        LR="3e-3",
        SAVE_STEPS=50,
    )


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, steady_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "adapter"
    return _train(
        "lora",
        tiny_model_dir,
        steady_data,
        out,
        MAX_STEPS=6,
        LR="1e-2",
        SAVE_STEPS=6,
    )


def test_evaluate_fine_tuned_model_writes_every_output(fine_tuned, steady_data, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--model-path", str(fine_tuned), "--test-json", str(steady_data / "training" /
            "test.json"), "--batch-size", "2", "--output-dir", str(out)]  # fmt: skip
    assert script_main("evaluate")(argv) == 0
    result = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parse"]["parsed"] == metrics["parse"]["total"] == 3
    model = metrics["model"]["all"]
    assert model["n"] == 3 and model["speed_mae"] < 0.06 and model["ade_m"] < 0.05
    assert set(metrics["baselines"]) == {
        "train_mean", "hold_last", "constant_speed_straight", "accel_and_curvature_rate"
    }  # fmt: skip
    assert "left" in metrics["model"] and "slow" in metrics["model"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["pairs"]) == 30 and r["raw_text"] for r in records)
    report = (out / "report.md").read_text()
    assert "| model | 3 |" in report and "hold_last" in report and "## left" in report
    for png in ("trajectories.png", "profiles.png", "ade_histogram.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "| model | 3 |" in result.out
    # The gallery: best, median and worst of the three clips, drawn through the calibration
    # segmenting stored, embedded in the report.
    gallery = json.loads((out / "gallery.json").read_text())
    assert [c["rank"] for c in gallery["clips"]] == ["best", "median", "worst"]
    assert gallery["without_overlay"] == {}
    ades = [c["ade_m"] for c in gallery["clips"]]
    assert ades == sorted(ades)
    for pick in gallery["clips"]:
        assert f"]({pick['image']})" in report
        image = np.asarray(Image.open(out / pick["image"]).convert("RGB")).astype(int)
        assert image.shape == (96, 160, 3)
        magenta = (np.abs(image - PREDICTED_COLOUR).sum(axis=-1) < 40)[30:]
        assert magenta.sum() > 10  # the predicted path, on the ground below the legend
    # compare_evaluations draws the same clips for every model side by side.
    comparison = tmp_path / "cmp" / "comparison.md"
    argv = [f"a={out}", f"b={out}", "--output", str(comparison)]
    assert script_main("compare_evaluations")(argv) == 0
    sheets = sorted((tmp_path / "cmp" / "comparison_gallery").glob("*.png"))
    assert len(sheets) == 3 and Image.open(sheets[0]).size == (320, 96)
    assert "comparison_gallery/all_best.png" in comparison.read_text()


def test_gallery_draws_a_clip_without_calibration_plain_and_counts_it(steady_data, tmp_path):
    import shutil

    from qwenvl.evaluate.gallery import write_gallery

    segments = tmp_path / "seg"
    shutil.copytree(steady_data / "seg", segments)
    table = pd.read_parquet(segments / "calibration.parquet")
    lacking = table["clip_id"].iloc[0]
    table.loc[0, "calibration"] = ""  # the dataset had none for this clip
    table.to_parquet(segments / "calibration.parquet")
    videos = sorted((segments / "videos").rglob("*.mp4"))
    truth = [[8.0, 0.01]] * 30
    records = [
        {"id": v.stem, "clip_id": v.parent.name, "video": str(v), "pairs": truth,
         "true_pairs": truth}
        for v in videos
    ]  # fmt: skip
    summary = write_gallery(records, tmp_path / "eval")
    assert list(summary["without_overlay"]) == [lacking]
    assert "no calibration" in summary["without_overlay"][lacking]
    for pick in summary["clips"]:
        image = np.asarray(Image.open(tmp_path / "eval" / pick["image"]).convert("RGB"))
        drawn = (np.abs(image.astype(int) - PREDICTED_COLOUR).sum(axis=-1) < 40)[30:].any()
        assert drawn == (not pick["id"].startswith(lacking))


def test_evaluate_base_model_counts_parse_failures(tiny_model_dir, steady_data, tmp_path, capsys):
    out = tmp_path / "eval"
    test_json = steady_data / "training" / "test.json"
    run_main("evaluate", "--model-path", tiny_model_dir, "--test-json", test_json,
             "--max-samples", "2", "--max-new-tokens", "12", "--output-dir", out)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parse"]["total"] == 2 and metrics["parse"]["parsed"] == 0
    assert sum(metrics["parse"]["failures"].values()) == 2
    assert metrics["model"]["all"] == {"n": 0}
    assert metrics["baselines"]["hold_last"]["all"]["n"] == 2
    argv = ["--model-path", str(tiny_model_dir), "--test-json", str(test_json),
            "--output-dir", str(out)]  # fmt: skip
    assert script_main("evaluate")(argv) == 2
    assert "--overwrite-output" in capsys.readouterr().err


def test_batched_generation_equals_one_at_a_time(fine_tuned, steady_data):
    from qwenvl.inference.backend import Request
    from qwenvl.inference.spec import read_spec
    from qwenvl.inference.transformers_backend import TransformersBackend
    from qwenvl.video import decode_video

    backend = TransformersBackend.load(read_spec(str(fine_tuned)))
    videos = sorted((steady_data / "seg" / "videos").rglob("*.mp4"))[:2]
    clips = [decode_video(v, backend.spec.video) for v in videos]
    # A narrower third clip gives a shorter prompt, so the batch really pads on the left.
    clips.append((clips[0][0][:, :, :64], clips[0][1]))
    prompt = backend.spec.user_prompt().user_text()
    requests = [Request.single(frames, fps, prompt) for frames, fps in clips]
    batched = backend.answer(requests, max_new_tokens=60)
    single = [backend.answer([r], max_new_tokens=60)[0] for r in requests]
    assert batched == single
    assert batched[0].text.startswith("[(8.0, 0.010)")
    # Token counts: the narrower clip's prompt is shorter.
    assert batched[2].prompt_tokens < batched[0].prompt_tokens
    assert all(a.answer_tokens == 60 for a in batched)  # 30 pairs need more: cut at the budget


def test_predict_resamples_any_mp4_and_answers_batched_as_one_at_a_time(
    fine_tuned, steady_data, tmp_path, capsys
):
    """A clip of another rate and length is made one second of 30 frames; the model trained on
    the steady clips answers it with their motion; batches answer as clips one at a time do."""
    from qwenvl.video import decode_video

    segment = sorted((steady_data / "seg" / "videos").rglob("*.mp4"))[0]
    frames, _ = decode_video(segment)
    longer = np.concatenate([frames, frames[:20]])  # 50 frames: 2.5 s at 20 FPS
    clip = tmp_path / "clips" / "clip_20fps.mp4"
    clip.parent.mkdir()
    clip.write_bytes(encode_mp4(longer, longer.shape[2], longer.shape[1], fps=20))
    predict = script_main("predict")
    assert predict(["--model-path", str(fine_tuned), "--json", str(clip)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["error"] is None and record["pairs"] == [[8.0, 0.01]] * 30
    videos = [str(clip), str(segment), str(clip)]
    answers = {}
    for batch in ("1", "2"):
        argv = ["--model-path", str(fine_tuned), "--batch-size", batch, *videos]
        assert predict(argv) == 0
        answers[batch] = capsys.readouterr().out.strip().splitlines()
    assert answers["1"] == answers["2"] and len(answers["1"]) == 3
    assert answers["1"][1] == f"{segment}: [" + ", ".join(["(8.0, 0.010)"] * 30) + "]"


def test_predict_names_each_clip_it_cannot_read_answers_and_draws_the_rest(
    fine_tuned, steady_data, tmp_path, capsys
):
    """Unreadable clips are named and the rest answered; with --render each answered clip's
    last frame is a PNG, with the path where its calibration is known and plain where not."""
    clips = tmp_path / "clips"
    clips.mkdir()
    empty = clips / "empty.mp4"
    empty.write_bytes(b"")
    text = clips / "notes.mp4"
    text.write_text("this is not a video\n")
    good = sorted((steady_data / "seg" / "videos").rglob("*.mp4"))[0]
    loose = clips / "loose.mp4"  # an mp4 outside any segments folder: no calibration
    loose.write_bytes(good.read_bytes())
    videos = [str(empty), str(text), str(good), str(loose)]
    predict = script_main("predict")
    args = ["--model-path", str(fine_tuned), *videos]
    assert predict([*args, "--render", str(tmp_path / "renders")]) == 1
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "empty.mp4: cannot decode" in errors[0]
    assert "notes.mp4: cannot decode" in errors[1]
    assert "Traceback" not in out.err
    answers = out.out.strip().splitlines()
    assert len(answers) == 2 and answers[0].startswith(f"{good}: [(8.0, 0.010)")
    drawn = np.asarray(Image.open(tmp_path / "renders" / f"{good.stem}.png").convert("RGB"))
    assert (np.abs(drawn.astype(int) - PREDICTED_COLOUR).sum(axis=-1) < 40)[30:].sum() > 10
    plain = np.asarray(Image.open(tmp_path / "renders" / "loose.png").convert("RGB"))
    assert not (np.abs(plain.astype(int) - PREDICTED_COLOUR).sum(axis=-1) < 40)[30:].any()
    assert f"{loose}: drawn without its path: no calibration.parquet" in out.err
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == sorted(
        [f"{good.stem}.png", "loose.png"]
    )  # nothing for the clips it could not read
    assert predict([*args, "--json"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["video"] for r in records] == videos
    assert [r["error"] is not None for r in records] == [True, True, False, False]
    assert records[2]["pairs"][0] == [8.0, 0.01]


def test_predict_reads_a_clips_calibration_from_the_dataset_before_any_model(
    steady_data, tmp_path, capsys
):
    predict = script_module("predict")
    clip_id = sorted(p.name for p in (steady_data / "seg" / "videos").iterdir())[0]
    found = json.loads(predict.dataset_calibration(f"{steady_data / 'raw'}:{clip_id}"))
    stored = pd.read_parquet(steady_data / "seg" / "calibration.parquet")
    assert found == json.loads(stored.set_index("clip_id").at[clip_id, "calibration"])
    argv = ["--model-path", str(tmp_path / "no-model"), "--render", str(tmp_path / "r"),
            "--calibration", f"{steady_data / 'raw'}:nope", "clip.mp4"]  # fmt: skip
    assert predict.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(f"nope is not in {steady_data / 'raw'}'s clip index")
    assert not (tmp_path / "r").exists()


def test_to_one_second_takes_30_frames_from_the_last_second():
    from qwenvl.inference.clips import to_one_second

    frames = np.arange(50)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    out, fps = to_one_second(frames, 20.0)
    assert len(out) == 30 and fps == 30.0
    assert out[0, 0, 0, 0] == 30 and out[-1, 0, 0, 0] == 49  # the last 20 frames, spread to 30


def _answer_logits(model_dir: Path, samples, settings) -> torch.Tensor:
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from qwenvl.inference import merging

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir).eval()
    return merging.answer_logits(model, merging.encoded_samples(samples, processor, settings))


@pytest.mark.parametrize("save_dtype", ["fp32", "bf16"])
def test_merge_in_fp32_keeps_the_adapter_and_reports_what_the_saved_dtype_keeps(
    adapter, steady_data, tmp_path, capsys, save_dtype
):
    """The merge adds in fp32 whatever the saved dtype; its report says how much of the update
    the saved weights keep, and the merged model's logits match the adapter's within what that
    dtype allows."""
    from qwenvl.data.samples import load_samples
    from qwenvl.inference.spec import read_spec
    from qwenvl.inference.transformers_backend import TransformersBackend

    test_json = steady_data / "training" / "test.json"
    merged_dir = tmp_path / "merged"
    merge = script_main("merge_lora")
    argv = ["--adapter-path", str(adapter), "--output-dir", str(merged_dir), "--save-dtype",
            save_dtype, "--check-json", str(test_json), "--check-samples", "2"]  # fmt: skip
    assert merge(argv) == 0
    out = capsys.readouterr().out
    assert (merged_dir / "video_settings.json").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    report = json.loads((merged_dir / "merge_report.json").read_text())
    assert report["merged_in"] == "fp32" and report["saved_dtype"] == save_dtype
    assert report["weights_compared"] > 0 and report["logits"]["positions"] > 0
    config = json.loads((merged_dir / "config.json").read_text())
    assert config["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[save_dtype]
    samples = list(load_samples([str(test_json)])[:2])
    spec = read_spec(str(adapter))
    peft_model = TransformersBackend.load(spec, dtype="fp32").model
    from qwenvl.inference import merging

    expected = merging.answer_logits(
        peft_model,
        merging.encoded_samples(samples, TransformersBackend.load(spec).processor, spec.video),
    )
    got = _answer_logits(merged_dir, samples, spec.video)
    if save_dtype == "fp32":
        assert report["update_kept_share"] > 0.999
        assert report["logits"]["share_of_the_fine_tune"] < 1e-3
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        assert "keep the fine-tune" in report["advice"]
    else:
        # bf16 keeps 8 bits of mantissa: the merged weights round; the report says how much.
        assert 0 < report["update_kept_share"] < 1
        assert report["logits"]["share_of_the_fine_tune"] > 0
        torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)
    assert "% of the update" in out and report["advice"] in out
    assert merge(argv) == 2  # an existing output needs --overwrite-output
    assert "--overwrite-output" in capsys.readouterr().err
