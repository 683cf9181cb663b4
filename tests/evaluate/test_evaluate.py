"""Evaluate, predict and merge on models trained here, and the batched generation path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_training_json, run_script, script_main, script_module
from PIL import Image

from qwenvl.evaluate.overlay import PREDICTED_COLOUR
from qwenvl.standins.synthetic import constant_profile, encode_mp4, write_synthetic_dataset

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


def _train(launcher: str, model, data: Path, out: Path, **extra) -> Path:
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
    run_script(launcher, env=env)
    return out


@pytest.fixture(scope="module")
def fine_tuned(tiny_model_dir, steady_data, tmp_path_factory) -> Path:
    """A full fine-tune (no DeepSpeed) that answers the steady clips with 30 exact pairs."""
    out = tmp_path_factory.mktemp("full") / "model"
    return _train(
        "./train_physical_ai.sh",
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
        "./train_physical_ai_lora.sh",
        tiny_model_dir,
        steady_data,
        out,
        MAX_STEPS=6,
        LR="1e-2",
        SAVE_STEPS=6,
    )


def test_evaluate_fine_tuned_model_writes_every_output(fine_tuned, steady_data, tmp_path):
    out = tmp_path / "eval"
    result = run_script(
        "scripts/evaluate.py",
        "--model-path",
        str(fine_tuned),
        "--test-json",
        str(steady_data / "training" / "test.json"),
        "--batch-size",
        "2",
        "--output-dir",
        str(out),
    )
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
    assert "| model | 3 |" in result.stdout
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


def test_evaluate_base_model_counts_parse_failures(tiny_model_dir, steady_data, tmp_path):
    out = tmp_path / "eval"
    run_script(
        "scripts/evaluate.py",
        "--model-path",
        str(tiny_model_dir),
        "--test-json",
        str(steady_data / "training" / "test.json"),
        "--max-samples",
        "2",
        "--max-new-tokens",
        "12",
        "--output-dir",
        str(out),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parse"]["total"] == 2 and metrics["parse"]["parsed"] == 0
    assert sum(metrics["parse"]["failures"].values()) == 2
    assert metrics["model"]["all"] == {"n": 0}
    assert metrics["baselines"]["hold_last"]["all"]["n"] == 2
    again = run_script(
        "scripts/evaluate.py",
        "--model-path",
        str(tiny_model_dir),
        "--test-json",
        str(steady_data / "training" / "test.json"),
        "--output-dir",
        str(out),
        check=False,
    )
    assert again.returncode == 2 and "--overwrite-output" in again.stderr


def test_batched_generation_equals_one_at_a_time(fine_tuned, steady_data):
    from qwenvl.inference.generate import generate_answers
    from qwenvl.inference.load import load_for_inference
    from qwenvl.video import decode_video

    loaded = load_for_inference(str(fine_tuned))
    videos = sorted((steady_data / "seg" / "videos").rglob("*.mp4"))[:2]
    clips = [decode_video(v, loaded.settings) for v in videos]
    # A narrower third clip gives a shorter prompt, so the batch really pads on the left.
    clips.append((clips[0][0][:, :, :64], clips[0][1]))
    prompt = loaded.user_prompt().user_text()
    batched = generate_answers(loaded, clips, [prompt] * len(clips), max_new_tokens=60)
    single = [generate_answers(loaded, [clip], [prompt], max_new_tokens=60)[0] for clip in clips]
    assert batched == single
    assert batched[0].startswith("[(8.0, 0.010)")


def test_predict_resamples_any_mp4_to_one_second_of_30_frames(fine_tuned, tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) for _ in range(50)]
    clip = tmp_path / "clip_20fps.mp4"
    clip.write_bytes(encode_mp4(frames, 160, 96, fps=20))  # 2.5 s at 20 FPS
    result = run_script("scripts/predict.py", "--model-path", str(fine_tuned), "--json", str(clip))
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["error"] is None and len(record["pairs"]) == 30
    plain = run_script("scripts/predict.py", "--model-path", str(fine_tuned), str(clip))
    assert plain.stdout.count("(") == 30


def test_predict_names_each_clip_it_cannot_read_answers_and_draws_the_rest(
    fine_tuned, steady_data, tmp_path
):
    """Unreadable clips are named and the rest answered; with --render each answered clip's
    last frame is a PNG, with the path where its calibration is known and plain where not."""
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    good = sorted((steady_data / "seg" / "videos").rglob("*.mp4"))[0]
    loose = tmp_path / "loose.mp4"  # an mp4 outside any segments folder: no calibration
    loose.write_bytes(good.read_bytes())
    videos = [str(empty), str(text), str(good), str(loose)]
    args = ["scripts/predict.py", "--model-path", str(fine_tuned), *videos]
    result = run_script(*args, "--render", str(tmp_path / "renders"), check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "empty.mp4: cannot decode" in errors[0]
    assert "notes.mp4: cannot decode" in errors[1]
    assert "Traceback" not in result.stderr
    answers = result.stdout.strip().splitlines()
    assert len(answers) == 2 and answers[0].startswith(f"{good}: [(8.0, 0.010)")
    drawn = np.asarray(Image.open(tmp_path / "renders" / f"{good.stem}.png").convert("RGB"))
    assert (np.abs(drawn.astype(int) - PREDICTED_COLOUR).sum(axis=-1) < 40)[30:].sum() > 10
    plain = np.asarray(Image.open(tmp_path / "renders" / "loose.png").convert("RGB"))
    assert not (np.abs(plain.astype(int) - PREDICTED_COLOUR).sum(axis=-1) < 40)[30:].any()
    assert f"{loose}: drawn without its path: no calibration.parquet" in result.stderr
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == sorted(
        [f"{good.stem}.png", "loose.png"]
    )  # nothing for the clips it could not read
    as_json = run_script(*args, "--json", check=False)
    records = [json.loads(line) for line in as_json.stdout.strip().splitlines()]
    assert as_json.returncode == 1 and [r["video"] for r in records] == videos
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
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict", Path("scripts/predict.py").resolve())
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    frames = np.arange(50)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    out, fps = predict.to_one_second(frames, 20.0)
    assert len(out) == 30 and fps == 30.0
    assert out[0, 0, 0, 0] == 30 and out[-1, 0, 0, 0] == 49  # the last 20 frames, spread to 30


def test_merged_model_logits_equal_the_adapter(adapter, tiny_model_dir, steady_data, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    from qwenvl.data.collator import VideoCollator
    from qwenvl.data.dataset import SupervisedDataset
    from qwenvl.data.samples import load_samples
    from qwenvl.inference.load import load_for_inference

    merged_dir = tmp_path / "merged"
    run_script(
        "scripts/merge_lora.py", "--adapter-path", str(adapter), "--output-dir", str(merged_dir)
    )
    assert (merged_dir / "video_settings.json").is_file() and not (
        merged_dir / "adapter_config.json"
    ).exists()
    loaded = load_for_inference(str(adapter))
    merged = Qwen3VLForConditionalGeneration.from_pretrained(merged_dir).eval()
    dataset = SupervisedDataset(
        load_samples([str(steady_data / "training" / "test.json")]),
        loaded.processor,
        loaded.settings,
        8192,
    )
    batch = VideoCollator(loaded.processor.tokenizer.pad_token_id)([dataset[0]])
    batch.pop("labels")
    with torch.no_grad():
        expected = loaded.model(**batch).logits
        got = merged(**batch).logits
    base = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        untouched = base(**batch).logits
    assert not torch.allclose(expected, untouched, atol=1e-3)  # the adapter changed something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    again = run_script(
        "scripts/merge_lora.py",
        "--adapter-path",
        str(adapter),
        "--output-dir",
        str(merged_dir),
        check=False,
    )
    assert again.returncode == 2 and "--overwrite-output" in again.stderr
