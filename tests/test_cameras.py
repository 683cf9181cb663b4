"""Several cameras per segment: frame selection by each camera's own timestamps, the segments,
datasets and prompts of several cameras, a three-camera LoRA run evaluated and predicted, and
a one-camera dataset of before views still training, evaluating and predicting as it did."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from conftest import call_main, launcher_env, run_main, train_in_process

from qwenvl.prepare import rawdata
from qwenvl.prepare.labels import ClipError, Segment, side_frames

FRONT = "camera_front_wide_120fov"
LEFT = "camera_cross_left_120fov"
RIGHT = "camera_cross_right_120fov"
THREE = (FRONT, LEFT, RIGHT)
SIDE_WIDTH = 64


def _segment(index: int, first_us: int) -> Segment:
    times = first_us + np.round(np.arange(30) * 1e6 / 30).astype(np.int64)
    nothing = np.zeros((30, 2))
    return Segment(index, np.arange(30) + 30 * index, times, nothing, nothing)


def test_each_camera_gives_the_frames_its_own_clock_puts_in_the_window():
    # Segment 0 spans 0 .. 966 667 us (29 frame intervals), segment 1 one second later.
    segments = [_segment(0, 0), _segment(1, 1_000_000)]
    # A 30 Hz camera whose clock runs 7 ms behind: frames at 7 000 + k * 33 333 us.
    late = 7_000 + np.round(np.arange(70) * 1e6 / 30).astype(np.int64)
    # A 10 Hz camera 20 ms ahead: frames at -20 000, 80 000, ..., 880 000, 980 000, ...
    slow = -20_000 + np.arange(25, dtype=np.int64) * 100_000
    found = side_frames(late, segments, "late")
    assert found.fps == 30.0 and not found.short
    # Hand-counted: k = 0 .. 28 lie in [0, 966 667]; k = 29 (973 667 us) is after the end.
    assert found.frames[0].tolist() == list(range(29))
    assert late[found.frames[0]].max() <= segments[0].frame_timestamps_us[-1] < late[29]
    # Segment 1, [1 000 000, 1 966 667]: k = 30 (1 007 000) .. 58 (1 940 333).
    assert found.frames[1].tolist() == list(range(30, 59))
    slow_found = side_frames(slow, segments, "slow")
    assert slow_found.fps == 10.0
    assert slow_found.frames[0].tolist() == list(range(1, 10))  # 80 000 .. 880 000
    assert slow_found.frames[1].tolist() == list(range(11, 20))  # 1 080 000 .. 1 880 000
    for seg in segments:  # nothing after a segment's last frame, nothing before its first
        for times, chosen in ((late, found), (slow, slow_found)):
            picked = times[chosen.frames[seg.index]]
            assert picked.min() >= seg.frame_timestamps_us[0]
            assert picked.max() <= seg.frame_timestamps_us[-1]
    # A camera that stops half-way through the clip cannot join the second segment.
    stopped = side_frames(late[:40], segments, "stopped")
    assert list(stopped.frames) == [0] and "covers 1.01-1.31 s" in stopped.short[1]
    assert "no frame" in side_frames(late[:20], segments, "early").short[1]
    with pytest.raises(ClipError, match="not increasing"):
        side_frames(late[::-1], segments, "backwards")


@pytest.fixture(scope="module")
def three_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("three") / "raw"
    run_main("make_synthetic_data", "--output-dir", raw, "--num-clips", "4", "--clip-seconds",
             "4", "--width", "160", "--height", "96", "--seed", "5", "--cameras", *THREE,
             "--no-progress")  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def three_segments(three_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("three_seg") / "segments"
    run_main("prepare_video_segments", "--data-dir", three_raw, "--output-dir", out,
             "--cameras", *THREE, "--side-max-width", SIDE_WIDTH, "--workers", "1")  # fmt: skip
    return out


def _decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_synthetic_cameras_have_their_own_clocks_and_calibration(three_raw):
    dataset = rawdata.RawDataset(three_raw, FRONT, (LEFT, RIGHT))
    clip_id = dataset.clip_index.index[0]
    clocks = {c: dataset.frame_timestamps(clip_id, 0, c).to_numpy() for c in THREE}
    assert len({int(t[0]) for t in clocks.values()}) == 3  # not frame-locked
    pose = {}
    for camera in THREE:
        found = rawdata.RawDataset(three_raw, camera).calibration(clip_id, 0)
        pose[camera] = found["sensor_extrinsics"]
    # The cross cameras sit on their sides of the car (y: + = left), the front one centred.
    assert pose[LEFT]["y"] > 0 > pose[RIGHT]["y"] and pose[FRONT]["y"] == 0


def test_side_views_hold_their_cameras_frames_of_the_window_and_none_after(
    three_raw, three_segments
):
    manifest = pd.read_parquet(three_segments / "manifest.parquet")
    source = json.loads((three_segments / "source.json").read_text())
    assert source["cameras"] == list(THREE)
    dataset = rawdata.RawDataset(three_raw, FRONT, (LEFT, RIGHT))
    row = manifest.iloc[1]
    assert row["cameras"].tolist() == list(THREE)
    first, last = row["frame_timestamps_us"][0], row["frame_timestamps_us"][-1]
    for view, camera in enumerate((LEFT, RIGHT)):
        times = dataset.frame_timestamps(row["clip_id"], 0, camera).to_numpy()
        inside = np.flatnonzero((times >= first) & (times <= last))
        assert row["extra_frames"][view] == len(inside) >= 29
        path = three_segments / row["extra_videos"][view]
        assert path.name == f"{row['clip_id']}_seg01.{camera}.mp4"
        frames = _decoded(path)
        assert len(frames) == len(inside) and frames.shape[2] == row["extra_widths"][view]
        assert row["extra_widths"][view] == SIDE_WIDTH and row["extra_fps"][view] == 30.0
        # The view's last frame is the camera's last frame in the window, not the one after.
        source_video = dataset.video_bytes(row["clip_id"], 0, camera)
        with av.open(__import__("io").BytesIO(source_video)) as container:
            wanted = [inside[-1], inside[-1] + 1]
            raw = {}
            for number, frame in enumerate(container.decode(video=0)):
                if number in wanted:
                    small = frame.reformat(width=frames.shape[2], height=frames.shape[1])
                    raw[number] = small.to_ndarray(format="rgb24").astype(float)
        error = {n: np.abs(frames[-1].astype(float) - raw[n]).mean() for n in wanted}
        assert error[wanted[0]] < error[wanted[1]]


def _without_camera_for(raw: Path, camera: str, clip_id: str) -> None:
    """Drop one clip's video of `camera` from its chunk zip, as a download lacking it would."""
    path = next((raw / "camera" / camera).glob("*.zip"))
    kept = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(kept, "w") as target:
        for item in source.infolist():
            if not item.filename.startswith(clip_id):
                target.writestr(item, source.read(item))
    kept.replace(path)


def test_a_clip_lacking_a_camera_is_skipped_or_kept_with_fewer_views(three_raw, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(three_raw, raw)
    lacking = rawdata.RawDataset(raw).clip_index.index[0]
    _without_camera_for(raw, RIGHT, lacking)
    run_main("prepare_video_segments", "--data-dir", raw, "--output-dir", tmp_path / "skip",
             "--cameras", *THREE, "--workers", "1")  # fmt: skip
    skipped = json.loads((tmp_path / "skip" / "skipped.json").read_text())
    assert list(skipped) == [lacking] and RIGHT in skipped[lacking]
    assert lacking not in set(pd.read_parquet(tmp_path / "skip" / "manifest.parquet").clip_id)
    printed = call_main(capsys, "prepare_video_segments", "--data-dir", raw, "--output-dir",
                        tmp_path / "keep", "--cameras", *THREE, "--workers", "1",
                        "--allow-missing-cameras")  # fmt: skip
    assert printed.returncode == 0 and "1 clips kept with fewer cameras" in printed.stdout
    manifest = pd.read_parquet(tmp_path / "keep" / "manifest.parquet")
    fewer = manifest[manifest.clip_id == lacking]
    assert len(fewer) and all(list(c) == [FRONT, LEFT] for c in fewer.cameras)
    assert all(len(c) == 3 for c in manifest[manifest.clip_id != lacking].cameras)
    # Its rows name the cameras they show: two clips, two labels.
    run_main("prepare_huggingface_dataset", "--segments-dir", tmp_path / "keep", "--output-dir",
             tmp_path / "hf", "--split", "by-clip", "--val-fraction", "0", "--test-fraction",
             "0")  # fmt: skip
    run_main("convert_to_training_format", "--input-dir", tmp_path / "hf", "--output-dir",
             tmp_path / "training")  # fmt: skip
    samples = {s["clip_id"]: s for s in json.loads((tmp_path / "training/train.json").read_text())}
    human = samples[lacking]["conversations"][0]["value"]
    assert human.count("<video>") == 2 and f"{LEFT}:" in human and RIGHT not in human
    # An unknown camera is one line.
    bad = call_main(capsys, "prepare_video_segments", "--data-dir", raw, "--output-dir",
                    tmp_path / "bad", "--cameras", FRONT, "camera_roof_360")  # fmt: skip
    assert bad.returncode == 2 and "camera_roof_360" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def three_training(three_segments, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("three_dataset")
    run_main("prepare_huggingface_dataset", "--segments-dir", three_segments, "--output-dir",
             base / "hf", "--split", "by-clip", "--val-fraction", "0.25", "--test-fraction",
             "0.25")  # fmt: skip
    run_main("convert_to_training_format", "--input-dir", base / "hf", "--output-dir",
             base / "training")  # fmt: skip
    return base / "training"


def test_the_front_camera_alone_is_the_one_camera_task_on_the_same_segments(
    three_segments, three_training, tmp_path
):
    from qwenvl.chat import INSTRUCTION, PromptSettings

    run_main("prepare_huggingface_dataset", "--segments-dir", three_segments, "--output-dir",
             tmp_path / "hf", "--split", "by-clip", "--val-fraction", "0.25", "--test-fraction",
             "0.25", "--cameras", FRONT)  # fmt: skip
    run_main("convert_to_training_format", "--input-dir", tmp_path / "hf", "--output-dir",
             tmp_path / "front")  # fmt: skip
    front = json.loads((tmp_path / "front" / "test.json").read_text())
    three = json.loads((three_training / "test.json").read_text())
    assert [s["id"] for s in front] == [s["id"] for s in three] and front
    assert front[0]["conversations"][0]["value"] == f"<video>\n{INSTRUCTION}"
    assert front[0]["extra_videos"] == [] and PromptSettings.load(tmp_path / "front").cameras == ()
    labels = [f"{c}:\n<video>" for c in THREE]
    assert three[0]["conversations"][0]["value"].startswith("\n".join(labels))
    assert PromptSettings.load(three_training).cameras == THREE


@pytest.fixture(scope="module")
def three_run(tiny_model_dir, three_training, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("three_run") / "lora"
    train_in_process(
        "lora",
        launcher_env(
            tiny_model_dir,
            three_training / "train.json",
            out,
            MAX_STEPS=4,
            BATCH_SIZE=2,
            SAVE_STEPS=4,
            VIDEO_SIDE_MAX_FRAMES=6,
            VIDEO_SIDE_MAX_PIXELS=2 * 32 * 32,
        ),  # fmt: skip
    )
    return out


def test_three_cameras_train_evaluate_and_predict_with_one_prompt(
    three_run, three_training, tmp_path, capsys, monkeypatch
):
    from transformers import AutoProcessor

    from qwenvl.chat import PromptSettings, human_of
    from qwenvl.data.dataset import TokenCounter, encode_views
    from qwenvl.data.samples import load_samples
    from qwenvl.inference.backend import Request
    from qwenvl.inference.clips import views_of
    from qwenvl.inference.spec import read_spec
    from qwenvl.inference.transformers_backend import TransformersBackend
    from qwenvl.video import VideoSettings

    # The checkpoint stores the cameras (prompt.json) and their budgets (video.json).
    assert PromptSettings.load(three_run).cameras == THREE
    video = VideoSettings.load(three_run)
    assert (video.side_max_frames, video.side_max_pixels) == (6, 2 * 32 * 32)
    samples = load_samples([str(three_training / "test.json")])
    processor = AutoProcessor.from_pretrained(three_run)
    counter = TokenCounter(processor, video)
    bounds = counter.bounds(samples)
    for i in range(len(samples)):  # the stored layout's count is the processor's
        sample = samples[i]
        text = counter.chat_text(sample)
        real = len(encode_views(processor, views_of(sample, video), text, video)["input_ids"][0])
        assert counter.length(sample) == real <= bounds[i]
    # Evaluation asks exactly what training showed, up to the answer.
    backend = TransformersBackend.load(read_spec(str(three_run)), device="cpu")
    sample = samples[0]
    asked = backend.prompt_texts([Request(views_of(sample, video), human_of(sample))])[0]
    assert counter.chat_text(sample).startswith(asked) and asked.count("<|vision_start|>") == 3
    # Prediction builds the same user turn from the checkpoint's stored prompt.
    prompt = backend.spec.user_prompt()
    assert prompt.human(prompt.user_text(None, backend.spec.answer_format)) == human_of(sample)
    run_main("evaluate", "--model-path", three_run, "--test-json", three_training / "test.json",
             "--max-samples", "2", "--output-dir", tmp_path / "eval")  # fmt: skip
    evaluated = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").open()]
    assert len(evaluated) == 2
    views = [sample["video"], *sample["extra_videos"]]
    printed = call_main(capsys, "predict", "--model-path", three_run, views[0], "--camera",
                        f"{LEFT}={views[1]}", "--camera", f"{RIGHT}={views[2]}",
                        "--json")  # fmt: skip
    assert printed.returncode == 0, printed.stdout + printed.stderr
    predicted = json.loads(printed.stdout)
    first = next(e for e in evaluated if e["id"] == sample["id"])
    assert predicted["raw_text"] == first["raw_text"]  # the same clips, the same prompt
    # A camera missing, an extra one, or one for a one-camera model: one line, exit 2, before
    # any model loads.
    monkeypatch.setattr(
        "qwenvl.inference.opener.open_for_script",
        lambda *a, **k: pytest.fail("a model was loaded"),
    )
    for argv, says in (
        (["--camera", f"{LEFT}={views[1]}"], f"give each VIDEO's {RIGHT} clip"),
        (["--camera", f"{LEFT}={views[1]}", "--camera", f"{RIGHT}={views[2]}", "--camera",
          f"camera_front_tele_30fov={views[2]}"], "was not trained on camera_front_tele_30fov"),
        ([], f"give each VIDEO's {LEFT} clip"),
        (["--camera", f"{FRONT}={views[1]}"], "is the model's first camera"),
        (["--camera", f"{LEFT}{views[1]}"], "expected NAME=PATH"),
    ):  # fmt: skip
        refused = call_main(capsys, "predict", "--model-path", three_run, views[0], *argv)
        assert refused.returncode == 2 and says in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


def test_a_one_camera_dataset_of_before_views_trains_evaluates_and_predicts_as_before(
    lora_run, training_dir, segments_dir, tiny_model_dir, tmp_path, capsys
):
    """Datasets, training files and checkpoints written before several cameras could be: no
    view columns in the manifest or the samples, no side budget in video.json, no cameras in
    prompt.json. Each is read as the one-camera case it is."""
    import pyarrow.parquet as pq

    from qwenvl import record

    views = [f.name for f in record.VIEWS]
    side = ("side_min_frames", "side_max_frames", "side_min_pixels", "side_max_pixels")
    # A checkpoint of before: its settings files without the new fields.
    old_run = tmp_path / "old_run"
    shutil.copytree(lora_run, old_run)
    video = json.loads((old_run / "video_settings.json").read_text())
    (old_run / "video_settings.json").write_text(
        json.dumps({k: video[k] for k in video if k not in side})
    )
    prompt = json.loads((old_run / "prompt.json").read_text())
    prompt.pop("cameras")
    (old_run / "prompt.json").write_text(json.dumps(prompt))
    # A test set of before: samples without the view fields, no store beside them.
    old_data = tmp_path / "old_data"
    old_data.mkdir()
    samples = json.loads((training_dir / "test.json").read_text())[:3]
    for sample in samples:
        sample["video"] = str((training_dir / sample["video"]).resolve())
        for name in views:
            sample.pop(name)
    (old_data / "test.json").write_text(json.dumps(samples))
    (old_data / "train.json").write_text(json.dumps(samples))
    for name in ("prompt.json", "answer_format.json"):
        shutil.copy(training_dir / name, old_data / name)
    new_data = tmp_path / "new_data"
    new_data.mkdir()
    fresh = json.loads((training_dir / "test.json").read_text())[:3]
    for sample in fresh:
        sample["video"] = str((training_dir / sample["video"]).resolve())
    (new_data / "test.json").write_text(json.dumps(fresh))
    for name in ("prompt.json", "answer_format.json"):
        shutil.copy(training_dir / name, new_data / name)
    outputs = {}
    for name, run, data in (("old", old_run, old_data), ("new", lora_run, new_data)):
        run_main("evaluate", "--model-path", run, "--test-json", data / "test.json",
                 "--max-new-tokens", "30", "--output-dir", tmp_path / f"eval_{name}")  # fmt: skip
        printed = call_main(capsys, "predict", "--model-path", run, samples[0]["video"],
                            "--json", "--max-new-tokens", "30")  # fmt: skip
        outputs[name] = ((tmp_path / f"eval_{name}" / "predictions.jsonl").read_text(),
                         json.loads(printed.stdout)["raw_text"])  # fmt: skip
    assert outputs["old"] == outputs["new"]
    # The old training file trains (two steps, on the old checkpoint's base model).
    train_in_process(
        "lora",
        launcher_env(
            tiny_model_dir,
            old_data / "train.json",
            tmp_path / "trained",
            MAX_STEPS=2,
            BATCH_SIZE=1,
            SAVE_STEPS=2,
        ),  # fmt: skip
    )
    assert (tmp_path / "trained" / "adapter_model.safetensors").is_file()
    # A manifest of before gives the dataset rows it gave.
    old_segments = tmp_path / "old_segments"
    old_segments.mkdir()
    for item in segments_dir.iterdir():
        if item.name != "manifest.parquet":
            (old_segments / item.name).symlink_to(item)
    table = pq.read_table(segments_dir / "manifest.parquet")
    pq.write_table(table.drop_columns(views), old_segments / "manifest.parquet")
    run_main("prepare_huggingface_dataset", "--segments-dir", old_segments, "--output-dir",
             tmp_path / "old_hf")  # fmt: skip
    from datasets import load_from_disk

    old_rows = load_from_disk(str(tmp_path / "old_hf"))["test"].to_list()
    new_rows = load_from_disk(str(training_dir.parent / "hf"))["test"].to_list()
    for row in old_rows + new_rows:  # the paths name the folders; the rest is the same
        row["video"] = Path(row["video"]).name
        for item in row["messages"][0]["content"]:
            item["video"] = item["video"] and Path(item["video"]).name
    assert old_rows == new_rows and old_rows


def test_the_token_cost_of_each_camera_set_is_counted_by_hand():
    from qwenvl.bench.tokens import bench_tokens

    found = bench_tokens()
    # Front: 1080p cut to 640x360, sized to 352x640 (multiples of 32 within 256 x 32x32 pixels):
    # 11 x 20 = 220 tokens per pair of frames, 30 frames -> 15 pairs: 3,300.
    assert found["front_view"]["visual_tokens"] == 15 * 11 * 20 == 3300
    # Another camera: cut to 320x180, sized to 192x320 (within 64 x 32x32), 8 frames: 4 x 60.
    assert found["other_view"]["visual_tokens"] == 4 * 6 * 10 == 240
    assert found["sets"]["front + 2 cross"]["visual_tokens"] == 3300 + 2 * 240
    assert found["sets"]["all 7"]["visual_tokens"] == 3300 + 6 * 240
