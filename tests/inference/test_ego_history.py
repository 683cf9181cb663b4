"""Ego history in the prompt: built once for dataset, training and evaluation alike, stored with
every checkpoint, and asked for (never guessed) by prediction."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import script_main
from transformers import AutoProcessor

from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings, model_messages, user_text_of
from qwenvl.data.dataset import SupervisedDataset
from qwenvl.data.samples import load_samples
from qwenvl.video import VideoSettings


@pytest.fixture(scope="module")
def history_training(segments_dir, tmp_path_factory):
    """The session's segments as a dataset with 1 s of ego history at 10 Hz, and 2 s at 10 Hz."""
    base = tmp_path_factory.mktemp("history")
    for seconds in ("1", "2"):
        hf, training = base / f"hf{seconds}", base / f"training{seconds}"
        argv = ["--segments-dir", str(segments_dir), "--output-dir", str(hf)]
        assert script_main("prepare_huggingface_dataset")([*argv, "--ego-history", seconds]) == 0
        assert (
            script_main("convert_to_training_format")(
                ["--input-dir", str(hf), "--output-dir", str(training)]
            )
            == 0
        )
    return base


def test_a_history_longer_than_the_clip_has_drops_those_segments_with_their_reason(
    history_training,
):
    dropped = json.loads((history_training / "hf2" / "dropped_for_history.json").read_text())
    assert dropped and all(key.endswith("_seg00") for key in dropped)  # 2 s before ~1 s: none
    assert all(
        "no 2 s of egomotion before the segment's last frame" in why for why in dropped.values()
    )
    samples = json.loads((history_training / "training2" / "train.json").read_text())
    assert samples and all(len(s["history_speed"]) == 20 for s in samples)  # never padded
    assert not {s["id"] for s in samples} & set(dropped)


def test_training_and_evaluation_put_the_same_prompt_in_front_of_the_model(
    history_training, tiny_model_dir
):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    samples = load_samples([str(history_training / "training1" / "train.json")])
    dataset = SupervisedDataset(samples, processor, VideoSettings(), 8192)
    prompt = PromptSettings.load(history_training / "training1")
    assert prompt == PromptSettings(ego_history_seconds=1.0, history_hz=10.0)
    for sample in list(dataset.samples)[:3]:
        trained = dataset.chat_text(sample)  # what training shows, the answer included
        asked = processor.apply_chat_template(
            model_messages(user_text_of(sample)), add_generation_prompt=True, tokenize=False
        )  # what evaluation and task metrics show, waiting for the answer
        assert trained.startswith(asked) and trained[len(asked) :].startswith("[(")
        # Prediction writes the same text from the pairs a user gives it.
        history = np.stack([sample["history_speed"], sample["history_curvature"]], axis=-1)
        assert prompt.user_text(history, AnswerFormat()) == user_text_of(sample)
        assert f"{AnswerFormat().format(history[-1:])[1:-1]}]" in user_text_of(sample)


def test_prediction_with_a_history_checkpoint_needs_each_clips_history(
    lora_run, training_dir, tmp_path, capsys
):
    checkpoint = tmp_path / "history_model"
    shutil.copytree(lora_run, checkpoint)
    PromptSettings(ego_history_seconds=1.0, history_hz=10.0).save(checkpoint)
    clip = str(training_dir / json.loads((training_dir / "test.json").read_text())[0]["video"])
    argv = ["--model-path", str(checkpoint), "--json", clip]
    assert script_main("predict")(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [
        f"error: {checkpoint} was trained with 1 s of ego history at 10 Hz in its prompt: give "
        "each clip's 10 (speed, curvature) pairs with --ego-history, once per VIDEO (0 given "
        "for 1)"
    ]
    inline = "[" + ", ".join(["(8.0, 0.010)"] * 10) + "]"
    csv = tmp_path / "history.csv"
    csv.write_text("speed,curvature\n" + "8.0,0.01\n" * 10)
    for given in (inline, str(csv)):
        assert script_main("predict")([*argv, "--ego-history", given]) == 0
        answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert answer["error"] is None and len(answer["pairs"]) == 30
    assert script_main("predict")([*argv, "--ego-history", "[(8.0, 0.010)]"]) == 2
    assert "1 pairs, expected 10" in capsys.readouterr().err
    plain = ["--model-path", str(lora_run), clip, "--ego-history", inline]
    assert script_main("predict")(plain) == 2
    assert "was trained without ego history: drop --ego-history" in capsys.readouterr().err


def test_a_history_checkpoint_is_not_evaluated_on_a_test_set_without_history(
    lora_run, training_dir, tmp_path, capsys
):
    checkpoint = tmp_path / "history_model"
    shutil.copytree(lora_run, checkpoint)
    PromptSettings(ego_history_seconds=1.0, history_hz=10.0).save(checkpoint)
    argv = ["--model-path", str(checkpoint), "--test-json", str(training_dir / "test.json")]
    assert script_main("evaluate")([*argv, "--output-dir", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was trained on another prompt than" in error
    assert "ego_history_seconds 1.0 vs 0.0" in error and not (tmp_path / "eval").exists()


def test_the_datasets_history_is_the_egomotion_up_to_each_segments_last_frame(
    history_training, segments_dir, raw_dataset
):
    """Every sample's history equals the clip's egomotion read at the history's times, the last
    at the segment's last observed frame (its own camera timestamp, from the manifest): a
    history read a frame later would put the next second into the prompt."""
    import pandas as pd

    from qwenvl.prepare.labels import MotionInterpolator, ego_history
    from qwenvl.prepare.rawdata import RawDataset

    manifest = pd.read_parquet(segments_dir / "manifest.parquet").set_index(
        ["clip_id", "segment_index"]
    )
    raw = RawDataset(raw_dataset)
    samples = json.loads((history_training / "training1" / "train.json").read_text())
    checked, later_differs = 0, []
    for sample in samples[:8]:
        row = manifest.loc[(sample["clip_id"], sample["segment_index"])]
        chunk = int(raw.clip_index.at[sample["clip_id"], "chunk"])
        motion = MotionInterpolator(raw.egomotion(sample["clip_id"], chunk))
        last = int(row["frame_timestamps_us"][-1])
        expected = ego_history(motion, last, 1.0, 10.0)
        got = np.stack([sample["history_speed"], sample["history_curvature"]], axis=-1)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
        # A frame later reads other values (the test tells one frame late from on time).
        later = ego_history(motion, last + 33_333, 1.0, 10.0)
        later_differs.append(not np.allclose(got, later, atol=1e-6))
        checked += 1
    assert checked == min(8, len(samples)) > 0 and any(later_differs)


def test_a_checkpoint_without_its_prompt_is_refused_never_guessed(
    lora_run, training_dir, tmp_path, capsys
):
    """A checkpoint trained with ego history that lost its prompt.json would be asked with the
    video-only prompt: evaluation and prediction refuse it, naming the file."""
    checkpoint = tmp_path / "history_model"
    shutil.copytree(lora_run, checkpoint)
    (checkpoint / "prompt.json").unlink()
    clip = str(training_dir / json.loads((training_dir / "test.json").read_text())[0]["video"])
    expected = f"error: {checkpoint / 'prompt.json'} is missing: this checkpoint does not say"
    assert script_main("predict")(["--model-path", str(checkpoint), clip]) == 2
    assert capsys.readouterr().err.strip().startswith(expected)
    argv = ["--model-path", str(checkpoint), "--test-json", str(training_dir / "test.json"),
            "--output-dir", str(tmp_path / "eval")]  # fmt: skip
    assert script_main("evaluate")(argv) == 2
    assert capsys.readouterr().err.strip().startswith(expected)


@pytest.mark.parametrize(
    "content, why",
    [
        ([[8.0] * 10, [0.01] * 10], "not a list of [[speed, curvature], ...] pairs"),
        ([[8.0, 0.01, 1.0]] * 10, "not a list of [[speed, curvature], ...] pairs"),
        ({"speed": [8.0] * 10}, "'curvature'"),
        ([[8.0, float("inf")]] * 10, "10 finite pairs, expected 10"),
    ],
)
def test_an_ego_history_file_of_another_shape_is_one_line(
    lora_run, training_dir, tmp_path, capsys, content, why
):
    """[[speeds], [curvatures]] is not read as interleaved pairs: the shapes --ego-history
    documents are taken, anything else is one line before any model loads."""
    checkpoint = tmp_path / "history_model"
    shutil.copytree(lora_run, checkpoint)
    PromptSettings(ego_history_seconds=1.0, history_hz=10.0).save(checkpoint)
    history = tmp_path / "history.json"
    history.write_text(json.dumps(content).replace("Infinity", "1e999"))
    clip = str(training_dir / json.loads((training_dir / "test.json").read_text())[0]["video"])
    argv = ["--model-path", str(checkpoint), clip, "--ego-history", str(history)]
    assert script_main("predict")(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --ego-history {history}: ") and why in err


@pytest.mark.parametrize("seconds", ["inf", "nan", "-1"])
def test_an_ego_history_that_is_no_length_of_time_is_one_line(
    segments_dir, tmp_path, capsys, seconds
):
    argv = ["--segments-dir", str(segments_dir), "--output-dir", str(tmp_path / "hf"),
            "--ego-history", seconds]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        script_main("prepare_huggingface_dataset")(argv)
    assert exited.value.code == 2 and "--ego-history: seconds in [0, 3600]" in (
        capsys.readouterr().err
    )


def test_an_ego_history_no_segment_has_is_one_line_and_writes_nothing(
    segments_dir, tmp_path, capsys
):
    out = tmp_path / "hf"
    argv = ["--segments-dir", str(segments_dir), "--output-dir", str(out), "--ego-history", "100"]
    assert script_main("prepare_huggingface_dataset")(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {segments_dir}: no segment is left (")
    assert "dropped for want of 100 s of egomotion before them" in err
    assert not out.exists() and not list(tmp_path.glob(".hf.tmp-*"))
