"""The data scripts end to end: segments, dataset splits, training JSON, registry, bad input."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
import zipfile
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from conftest import run_script, script_main
from datasets import load_from_disk

from qwenvl.answer import AnswerFormat, AnswerParseError, format_pairs, parse_pairs
from qwenvl.data import data_list
from qwenvl.data.samples import answer_format_of, load_samples
from qwenvl.prepare import rawdata


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_twenty_second_clip_gives_19_segments_of_30_frames(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "seg"
    run_script(
        "scripts/make_synthetic_data.py",
        "--output-dir",
        str(raw),
        "--num-clips",
        "1",
        "--clip-seconds",
        "20",
        "--width",
        "96",
        "--height",
        "64",
        "--seed",
        "9",
    )
    run_script(
        "scripts/prepare_video_segments.py",
        "--data-dir",
        str(raw),
        "--output-dir",
        str(out),
        "--max-width",
        "64",
    )
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["segment_index"].tolist() == list(range(19))
    for row in manifest.itertuples():
        assert len(row.frame_timestamps_us) == 30 and len(row.future_speed) == 30
        assert _frames(out / row.video) == 30
        with av.open(str(out / row.video)) as container:
            assert container.streams.video[0].width == 64  # downscaled, aspect kept
            assert (
                container.streams.video[0].height == 42 or container.streams.video[0].height == 44
            )


def test_manifest_labels_match_the_source(segments_dir, raw_dataset):
    manifest = pd.read_parquet(segments_dir / "manifest.parquet")
    assert manifest["clip_id"].nunique() == 4 and len(manifest) == 4 * 5
    row = manifest.iloc[3]
    ds = rawdata.RawDataset(raw_dataset)
    t = ds.frame_timestamps(row["clip_id"], row["chunk"]).to_numpy()
    start = int(np.argmin(np.abs(t - row["segment_index"] * 1_000_000)))
    assert list(row["frame_timestamps_us"]) == t[start : start + 30].tolist()
    ego = ds.egomotion(row["clip_id"], row["chunk"])
    np.testing.assert_allclose(
        row["future_curvature"],
        np.interp(t[start + 30 : start + 60], ego["timestamp"], ego["curvature"]),
    )


def test_splits_never_share_a_clip(training_dir):
    dataset = load_from_disk(str(training_dir.parent / "hf"))
    clips = {split: set(dataset[split]["clip_id"]) for split in dataset}
    assert all(clips.values())
    assert not (clips["train"] & clips["test"]) and not (clips["train"] & clips["validation"])
    assert not (clips["validation"] & clips["test"])
    row = dataset["train"][0]
    assert row["messages"][0]["content"][0]["type"] == "video"
    assert row["messages"][0]["content"][0]["fps"] == pytest.approx(30, abs=0.2)
    assert parse_pairs(row["messages"][1]["content"][0]["text"]) == [
        (round(v, 1), round(c, 3))
        for v, c in zip(row["future_speed"], row["future_curvature"], strict=True)
    ]


def test_training_json_paths_resolve_and_hold_labels(training_dir):
    samples = json.loads((training_dir / "train.json").read_text())
    sample = samples[0]
    assert sample["conversations"][0]["value"].startswith("<video>\n")
    assert (training_dir / sample["video"]).is_file()
    assert len(sample["future_speed"]) == 30 and len(sample["observed_curvature"]) == 30
    loaded = load_samples([str(training_dir / "train.json")])
    assert Path(loaded[0]["video"]).is_file()


def test_answer_decimals_are_stored_with_the_dataset_and_its_training_json(
    segments_dir, training_dir, tmp_path
):
    run_script(
        "scripts/prepare_huggingface_dataset.py",
        "--segments-dir",
        str(segments_dir),
        "--output-dir",
        str(tmp_path / "hf"),
        "--velocity-decimals",
        "2",
        "--curvature-decimals",
        "4",
    )
    run_script(
        "scripts/convert_to_training_format.py",
        "--input-dir",
        str(tmp_path / "hf"),
        "--output-dir",
        str(tmp_path / "training"),
    )
    assert AnswerFormat.load(tmp_path / "hf") == AnswerFormat(2, 4)
    train_json = tmp_path / "training" / "train.json"
    assert answer_format_of([str(train_json)]) == AnswerFormat(2, 4)
    answer = json.loads(train_json.read_text())[0]["conversations"][1]["value"]
    assert re.match(r"\[\(-?\d+\.\d{2}, -?\d+\.\d{4}\)", answer)
    with pytest.raises(ValueError, match="different answer formats"):
        answer_format_of([str(train_json), str(training_dir / "train.json")])


def test_registry_names_and_sampling(training_dir):
    names = [
        e["annotation_path"] for e in data_list(["physical_ai_driving", "physical_ai_driving_test"])
    ]
    assert names == [
        "qwen_video_dataset_training/train.json",
        "qwen_video_dataset_training/test.json",
    ]
    assert data_list(["physical_ai_driving_val%25"])[0]["sampling_rate"] == 0.25
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*physical_ai_driving"):
        data_list(["nope"])
    full = load_samples([str(training_dir / "train.json")])
    half = load_samples([f"{training_dir / 'train.json'}%50"])
    assert len(half) == round(len(full) / 2)
    assert {s["id"] for s in half} <= {s["id"] for s in full}


def test_answer_round_trip_and_strict_parser():
    pairs = [(12.3, 0.004), (-1.5, -0.012)] * 15
    assert parse_pairs(format_pairs(pairs)) == pairs
    assert format_pairs([(0.04, -0.0001)]) == "[(0.0, 0.000)]"  # no "-0.000"
    with pytest.raises(AnswerParseError, match="29 pairs"):
        parse_pairs(format_pairs(pairs[:29]))
    with pytest.raises(AnswerParseError, match="non-finite"):
        parse_pairs(format_pairs(pairs).replace("12.3", "nan", 1))
    with pytest.raises(AnswerParseError, match="text around"):
        parse_pairs("Sure! " + format_pairs(pairs))
    with pytest.raises(AnswerParseError, match="text around"):
        parse_pairs(format_pairs(pairs) + " done")


def _rewrite_member(zip_path: Path, member: str, data: bytes | None) -> None:
    """Replace (or with None remove) one member of a zip."""
    with zipfile.ZipFile(zip_path) as src:
        items = {n: src.read(n) for n in src.namelist()}
    if data is None:
        del items[member]
    else:
        items[member] = data
    with zipfile.ZipFile(zip_path, "w") as dst:
        for name, content in items.items():
            dst.writestr(name, content)


def _timestamps_with(values) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame({"timestamp": values}).to_parquet(buffer, index=False)
    return buffer.getvalue()


def _break_video(data: bytes) -> bytes:
    return b"\x00not an mp4\x00" * 100


def _truncate_video(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_INPUTS = {
    "corrupt mp4": ("video", _break_video, "cannot be decoded"),
    "truncated mp4": ("video", _truncate_video, "cannot be decoded|video ends after"),
    "no egomotion": ("egomotion", None, "egomotion.parquet not found"),
    "nan timestamps": (
        "timestamps",
        lambda t: _timestamps_with(np.where(np.arange(len(t)) == 5, np.nan, t.astype(float))),
        "NaN",
    ),
    "non-monotonic timestamps": (
        "timestamps",
        lambda t: _timestamps_with(np.r_[t[:10], t[9:-1]]),
        "not strictly increasing",
    ),
    "short clip": ("timestamps", lambda t: _timestamps_with(t[:45]), "shorter than 2 s"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_clip_is_named_skipped_and_the_rest_processed(case, raw_dataset, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dataset, raw)
    ds = rawdata.RawDataset(raw)
    clip_id, chunk = ds.clip_index.index[0], int(ds.clip_index["chunk"].iloc[0])
    what, change, message = BAD_INPUTS[case]
    camera, ego = ds.camera, rawdata.EGOMOTION
    camera_zip = raw / ds.chunk_file(camera, chunk)
    if what == "video":
        member = ds.member(camera, clip_id, "video")
        _rewrite_member(camera_zip, member, change(ds.video_bytes(clip_id, chunk)))
    elif what == "egomotion":
        _rewrite_member(raw / ds.chunk_file(ego, chunk), ds.member(ego, clip_id, ego), None)
    else:
        member = ds.member(camera, clip_id, "frame_timestamps")
        _rewrite_member(camera_zip, member, change(ds.frame_timestamps(clip_id, chunk).to_numpy()))
    result = run_script(
        "scripts/prepare_video_segments.py",
        "--data-dir",
        str(raw),
        "--output-dir",
        str(tmp_path / "seg"),
        "--workers",
        "1",
    )
    assert re.search(rf"skipped clip {clip_id}: .*({message})", result.stderr)
    assert "3 clips -> 15 segments" in result.stdout and "1 clips skipped" in result.stdout
    manifest = pd.read_parquet(tmp_path / "seg" / "manifest.parquet")
    assert clip_id not in set(manifest["clip_id"]) and manifest["clip_id"].nunique() == 3
    assert not (tmp_path / "seg" / "videos" / clip_id).exists()


def test_nothing_produced_is_an_error_and_leaves_no_output(raw_dataset, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dataset, raw)
    for zip_path in (raw / "labels").rglob("*.zip"):
        zip_path.unlink()
    result = run_script(
        "scripts/prepare_video_segments.py",
        "--data-dir",
        str(raw),
        "--output-dir",
        str(tmp_path / "seg"),
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "seg").exists() and not list(tmp_path.glob(".seg*"))


def test_existing_output_needs_overwrite(segments_dir, tmp_path, capsys):
    existing = tmp_path / "dataset"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine\n")
    argv = ["--segments-dir", str(segments_dir), "--output-dir", str(existing)]
    assert script_main("prepare_huggingface_dataset")(argv) == 2
    assert "--overwrite-output" in capsys.readouterr().err
    assert (existing / "notes.txt").read_text() == "mine\n"


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path):
    from qwenvl.files import atomic_output_dir

    with pytest.raises(KeyboardInterrupt), atomic_output_dir(tmp_path / "out", False) as tmp:
        (tmp / "manifest.parquet").write_text("partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_download_fails_fast_when_offline(tmp_path):
    start = time.monotonic()
    result = run_script(
        "scripts/download_dataset.py",
        "--chunks",
        "0000",
        "--output-dir",
        str(tmp_path / "d"),
        env={"HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert result.returncode != 0 and time.monotonic() - start < 30
    assert result.stderr.strip() == (
        "error: nvidia/PhysicalAI-Autonomous-Vehicles: "
        "the Hugging Face hub is set offline (HF_HUB_OFFLINE)"
    )


def test_download_fails_fast_without_a_token(tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")}
    result = run_script(
        "scripts/download_dataset.py",
        "--chunks",
        "0000",
        "--output-dir",
        str(tmp_path / "d"),
        env=env,
        check=False,
    )
    assert result.returncode != 0 and "no Hugging Face token" in result.stderr


def test_dataset_steps_in_batches_give_what_row_by_row_gave(segments_dir, training_dir, tmp_path):
    from datasets import load_from_disk

    from qwenvl.bench import reference as benchmark

    hf = training_dir.parent / "hf"  # what the batched prepare_huggingface_dataset.py wrote
    benchmark.reference_dataset(segments_dir, tmp_path / "hf")
    ours, before = load_from_disk(str(hf)), load_from_disk(str(tmp_path / "hf"))
    for split in ("train", "validation", "test"):
        assert ours[split].features == before[split].features
        assert ours[split].to_list() == before[split].to_list() and len(ours[split])
    benchmark.reference_convert(hf, tmp_path / "training")
    for name in ("train.json", "val.json", "test.json"):
        written = json.loads((training_dir / name).read_text())
        assert written == json.loads((tmp_path / "training" / name).read_text()) and written
