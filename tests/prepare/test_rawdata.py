"""The dataset as NVIDIA ships it: root index, chunks not downloaded, validity, official splits,
features.csv templates, feature presence, and the devkit download against a stand-in hub."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import call_main, run_script
from datasets import load_from_disk

from qwenvl.prepare import rawdata
from qwenvl.standins.synthetic import write_synthetic_dataset

CAMERA = rawdata.DEFAULT_CAMERA


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Six 3-second clips (two segments each) in three chunks, in the real layout."""
    root = tmp_path_factory.mktemp("layout") / "data"
    write_synthetic_dataset(
        root, 6, clip_seconds=3, width=64, height=48, seed=4, chunk_size=2, progress=False,
        val_fraction=0.2, test_fraction=0.3,
    )  # fmt: skip
    return root


def _copy(source: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(source, raw)
    return raw


def _prepare(raw: Path, out: Path, check: bool = True):
    return run_script(
        "scripts/prepare_video_segments.py",
        "--data-dir", str(raw), "--output-dir", str(out), "--workers", "1", "--max-width", "64",
        check=check,
    )  # fmt: skip


def _index(raw: Path) -> pd.DataFrame:
    return pd.read_parquet(raw / rawdata.CLIP_INDEX)


def test_only_chunks_present_are_processed_and_the_rest_counted_once(source, tmp_path):
    raw = _copy(source, tmp_path)
    for zip_path in raw.rglob("*.chunk_0002.zip"):
        zip_path.unlink()
    # The real index lists every chunk of the dataset, most of them never downloaded.
    index = _index(raw)
    others = pd.DataFrame(
        {"chunk": [7, 7, 8], "split": "train", "clip_is_valid": True},
        index=pd.Index(["x-1", "x-2", "x-3"], name="clip_id"),
    )
    pd.concat([index, others]).to_parquet(raw / rawdata.CLIP_INDEX)
    result = _prepare(raw, tmp_path / "seg")
    assert "5 index clips in chunks not downloaded" in result.stdout
    assert "x-1" not in result.stdout + result.stderr  # a count, no list
    manifest = pd.read_parquet(tmp_path / "seg" / "manifest.parquet")
    assert set(manifest["chunk"]) == {0, 1} and manifest["clip_id"].nunique() == 4
    summary = json.loads((tmp_path / "seg" / "summary.json").read_text())
    assert summary["clips_in_chunks_not_downloaded"] == 5 and summary["clips_skipped"] == 0
    assert json.loads((tmp_path / "seg" / "skipped.json").read_text()) == {}


def test_invalid_clip_is_left_out_of_every_output_and_counted(source, tmp_path):
    raw = _copy(source, tmp_path)
    index = _index(raw)
    invalid = index.index[1]
    index.loc[invalid, "clip_is_valid"] = False
    index.to_parquet(raw / rawdata.CLIP_INDEX)
    result = _prepare(raw, tmp_path / "seg")
    assert "1 invalid (clip_is_valid false)" in result.stdout
    seg = tmp_path / "seg"
    assert json.loads((seg / "summary.json").read_text())["clips_invalid"] == 1
    for path in seg.rglob("*"):
        assert invalid not in path.name
        if path.suffix == ".json":
            assert invalid not in path.read_text()
    assert invalid not in set(pd.read_parquet(seg / "manifest.parquet")["clip_id"])


def test_presence_table_skips_clips_without_the_camera_with_a_reason(source, tmp_path):
    raw = _copy(source, tmp_path)
    presence_path = raw / rawdata.FEATURE_PRESENCE[0]
    presence = pd.read_parquet(presence_path)
    missing = presence.index[0]
    presence.loc[missing, CAMERA] = False
    # Older revisions name the table sensor_presence.parquet; it is read the same way.
    presence.to_parquet(raw / rawdata.FEATURE_PRESENCE[1])
    presence_path.unlink()
    _prepare(raw, tmp_path / "seg")
    skipped = json.loads((tmp_path / "seg" / "skipped.json").read_text())
    assert list(skipped) == [missing] and CAMERA in skipped[missing]


def _hf(capsys, segments: Path, out: Path, *args: str, check: bool = True):
    result = call_main(capsys, "prepare_huggingface_dataset", "--segments-dir", segments,
                       "--output-dir", out, *args)  # fmt: skip
    assert result.returncode == 0 or not check, result.stderr
    return result


def test_official_split_is_followed_and_by_clip_works_without_one(source, tmp_path, capsys):
    raw = _copy(source, tmp_path)
    _prepare(raw, tmp_path / "seg")
    result = _hf(capsys, tmp_path / "seg", tmp_path / "hf")
    assert "split: official, clip_index.parquet" in result.stdout
    official = _index(raw)["split"].map({"train": "train", "val": "validation", "test": "test"})
    dataset = load_from_disk(str(tmp_path / "hf"))
    for split in dataset:
        assert set(dataset[split]["clip_id"]) == set(official.index[official == split])
        assert len(dataset[split]) == 2 * len(set(dataset[split]["clip_id"]))
    # splits/<name>.parquet overrides the index's split.
    (raw / "splits").mkdir()
    flipped = official.map({"train": "test", "validation": "val", "test": "train"})
    flipped.rename("split").to_frame().to_parquet(raw / "splits" / "flipped.parquet")
    result = _hf(capsys, tmp_path / "seg", tmp_path / "hf2", "--split-name", "flipped")
    assert "splits/flipped.parquet" in result.stdout
    dataset = load_from_disk(str(tmp_path / "hf2"))
    assert set(dataset["test"]["clip_id"]) == set(official.index[official == "train"])
    # An index without a split: official refuses in one line, by-clip splits by clip.
    bare = _copy(source, tmp_path / "bare")
    _index(bare).drop(columns=["split"]).to_parquet(bare / rawdata.CLIP_INDEX)
    _prepare(bare, tmp_path / "bare_seg")
    refused = _hf(capsys, tmp_path / "bare_seg", tmp_path / "bare_hf", check=False)
    assert refused.returncode == 2 and "use --split by-clip" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    result = _hf(capsys, tmp_path / "bare_seg", tmp_path / "bare_hf", "--split", "by-clip")
    assert "split: by clip" in result.stdout
    dataset = load_from_disk(str(tmp_path / "bare_hf"))
    clips = [set(dataset[split]["clip_id"]) for split in dataset]
    assert sum(len(c) for c in clips) == 6 and len(set().union(*clips)) == 6


def test_features_csv_member_templates_are_followed(source, tmp_path):
    raw = _copy(source, tmp_path)
    features = rawdata.read_features_csv(raw / rawdata.FEATURES_CSV)
    renamed = {
        CAMERA: {"video": "{clip_id}/front.mp4", "frame_timestamps": "{clip_id}/front_ts.parquet"},
        rawdata.EGOMOTION: {"egomotion": "ego/{clip_id}.parquet"},
    }
    dataset = rawdata.RawDataset(source)
    for feature, templates in renamed.items():
        for chunk in sorted(_index(raw)["chunk"].unique()):
            zip_path = raw / dataset.chunk_file(feature, chunk)
            with zipfile.ZipFile(zip_path) as old:
                members = {name: old.read(name) for name in old.namelist()}
            with zipfile.ZipFile(zip_path, "w") as new:
                for clip_id in _index(raw).index[_index(raw)["chunk"] == chunk]:
                    for alias, template in templates.items():
                        data = members[dataset.member(feature, clip_id, alias)]
                        new.writestr(template.format(clip_id=clip_id), data)
        features.at[feature, "clip_files_in_zip"] = templates
    rawdata.write_features_csv(features, raw / rawdata.FEATURES_CSV)
    _prepare(raw, tmp_path / "renamed")
    _prepare(source, tmp_path / "original")
    got = pd.read_parquet(tmp_path / "renamed" / "manifest.parquet")
    expected = pd.read_parquet(tmp_path / "original" / "manifest.parquet")
    pd.testing.assert_frame_equal(got, expected)


class StandInHub:
    """The hub calls the devkit makes, served from a local copy of the dataset."""

    def __init__(self, root: Path, commit: str) -> None:
        self.root, self.commit, self.fetched = root, commit, []

    def install(self, monkeypatch) -> None:
        import huggingface_hub
        from huggingface_hub.hf_api import GitRefInfo, GitRefs, RepoFile

        hub = self

        def list_repo_refs(self, repo_id, **kwargs):
            main = GitRefInfo(name="main", ref="refs/heads/main", target_commit=hub.commit)
            return GitRefs(branches=[main], converts=[], tags=[])

        def file_exists(self, repo_id, filename, **kwargs):
            return (hub.root / filename).is_file()

        def get_paths_info(self, repo_id, paths, **kwargs):
            paths = [paths] if isinstance(paths, str) else paths
            return [
                RepoFile(path=p, size=(hub.root / p).stat().st_size, oid="0")
                for p in paths
                if (hub.root / p).is_file()
            ]

        def hf_hub_download(self, repo_id, filename, *, revision=None, local_dir=None, **kwargs):
            assert revision == hub.revision_asked or revision == hub.commit
            hub.fetched.append((filename, revision))
            target = Path(local_dir) / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hub.root / filename, target)
            return str(target)

        self.revision_asked = None
        for name, fn in (
            ("list_repo_refs", list_repo_refs),
            ("file_exists", file_exists),
            ("get_paths_info", get_paths_info),
            ("hf_hub_download", hf_hub_download),
        ):
            monkeypatch.setattr(huggingface_hub.HfApi, name, fn)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
        monkeypatch.setenv("HF_TOKEN", "hf_stand_in")


def _download(*args: str) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "download_dataset", Path(__file__).parents[2] / "scripts" / "download_dataset.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


def test_download_fetches_the_devkit_named_files_and_pins_the_revision(
    source, tmp_path, monkeypatch, capsys
):
    hub = StandInHub(source, "a" * 40)
    hub.install(monkeypatch)
    out = tmp_path / "download"
    assert _download("--chunks", "0001", "--output-dir", str(out)) == 0
    dataset = rawdata.RawDataset(source)
    # The calibration comes by default: the path overlays need it.
    features = (CAMERA, rawdata.EGOMOTION, *rawdata.CALIBRATION_FEATURES)
    chunk_files = {dataset.chunk_file(f, 1) for f in features}
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    written = {p for p in written if not p.startswith(".cache")}  # the hub's own bookkeeping
    metadata = {
        rawdata.FEATURES_CSV, rawdata.CLIP_INDEX, rawdata.FEATURE_PRESENCE[0],
        rawdata.DATA_COLLECTION,
    }  # fmt: skip
    assert written == chunk_files | metadata | {"dataset_revision.json"}
    assert json.loads((out / "dataset_revision.json").read_text())["revision"] == "a" * 40
    assert "GB" in capsys.readouterr().out
    # The hub moves on; a later download into the same folder keeps to the recorded commit.
    hub.commit = "b" * 40
    hub.revision_asked = "a" * 40
    hub.fetched.clear()
    assert _download("--chunks", "0000", "--output-dir", str(out), "--no-calibration") == 0
    assert hub.fetched and {revision for _, revision in hub.fetched} == {"a" * 40}
    assert (out / dataset.chunk_file(CAMERA, 0)).is_file()
    assert not any("calibration/" in f for f, _ in hub.fetched)
    # What was downloaded is a dataset the next step reads: two chunks here, one not.
    result = _prepare(out, tmp_path / "seg")
    assert "2 index clips in chunks not downloaded" in result.stdout
    # A chunk the index does not know is one line, before any download.
    hub.fetched.clear()
    capsys.readouterr()
    assert _download("--chunks", "0042", "--output-dir", str(out)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: unknown chunk 0042; the dataset has chunks 0..2"
    )
    assert not [f for f, _ in hub.fetched if "chunk_0042" in f]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_a_features_csv_with_only_the_camera_and_egomotion_segments_every_clip(source, tmp_path):
    """Calibration is for drawing paths only: without its rows in features.csv every clip is
    segmented and trains, and the summary says why none has an overlay, once, with a count."""
    raw = _copy(source, tmp_path)
    table = rawdata.read_features_csv(raw / rawdata.FEATURES_CSV)
    rawdata.write_features_csv(table.loc[[CAMERA, rawdata.EGOMOTION]], raw / rawdata.FEATURES_CSV)
    out = tmp_path / "seg"
    result = _prepare(raw, out)
    assert "Traceback" not in result.stderr
    summary = _summary(out)
    assert summary["clips_segmented"] == 6 and summary["clips_skipped"] == 0
    assert summary["why_without_calibration"] == {"features.csv lists no camera_intrinsics": 6}
    assert "6 clips: features.csv lists no camera_intrinsics" in result.stdout
    calibration = pd.read_parquet(out / "calibration.parquet")
    assert (calibration["calibration"] == "").all()


def test_missing_renamed_or_nan_calibration_is_named_per_cause_and_the_clips_train(
    source, tmp_path
):
    raw = _copy(source, tmp_path)
    calibration = raw / "calibration"
    (calibration / "camera_intrinsics" / "camera_intrinsics.chunk_0001.parquet").unlink()
    extrinsics = calibration / "sensor_extrinsics" / "sensor_extrinsics.chunk_0002.parquet"
    pd.read_parquet(extrinsics).rename(columns={"qx": "quat_x"}).to_parquet(extrinsics)
    intrinsics = calibration / "camera_intrinsics" / "camera_intrinsics.chunk_0000.parquet"
    table = pd.read_parquet(intrinsics)
    table.iloc[0, table.columns.get_loc("cx")] = float("nan")
    table.to_parquet(intrinsics)
    out = tmp_path / "seg"
    result = _prepare(raw, out)
    summary = _summary(out)
    assert summary["clips_segmented"] == 6 and summary["clips_without_calibration"] == 5
    assert summary["why_without_calibration"] == {
        "camera_intrinsics not downloaded (no camera_intrinsics.chunk_0001.parquet)": 2,
        "sensor_extrinsics lacks the columns qx": 2,
        "camera_intrinsics holds NaN or non-numbers": 1,
    }
    assert "Traceback" not in result.stderr and "5 clips have no calibration" in result.stdout
