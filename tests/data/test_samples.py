"""The training files at scale: the Arrow store read lazily yields exactly the samples the JSON
gives (and the seed guide's way of reading it), in order and for every name%pct subset."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from qwenvl import record
from qwenvl.data.samples import STORE_SUFFIX, Samples, load_samples, mean_pairs


def _seed_guide_way(path: Path, rate: float, seed: int) -> list[dict]:
    """How training read train.json before: parse it whole, sample the list, resolve videos."""
    rows = json.loads(path.read_text())
    if rate < 1:
        rows = random.Random(seed).sample(rows, max(1, round(len(rows) * rate)))
    for row in rows:
        row["video"] = str(path.parent / row["video"])
    return rows


@pytest.fixture(scope="module")
def json_only(training_dir, tmp_path_factory) -> Path:
    """The same training files without their Arrow stores (as a user's own files are)."""
    out = tmp_path_factory.mktemp("json_only") / "training"
    shutil.copytree(training_dir, out)
    for store in out.glob(f"*{STORE_SUFFIX}"):
        store.unlink()
    return out


@pytest.mark.parametrize("spec", ["train.json", "train.json%50", "train.json%20", "test.json"])
@pytest.mark.parametrize("seed", [42, 7])
def test_the_store_yields_the_samples_of_the_json_in_order(training_dir, json_only, spec, seed):
    name, _, pct = spec.partition("%")
    assert (training_dir / name).with_suffix(STORE_SUFFIX).is_file()
    lazy = load_samples([f"{training_dir / name}{'%' + pct if pct else ''}"], seed)
    parsed = load_samples([f"{json_only / name}{'%' + pct if pct else ''}"], seed)
    reference = _seed_guide_way(training_dir / name, int(pct or 100) / 100, seed)
    assert isinstance(lazy, Samples) and isinstance(lazy.parts[0].rows, pa.Table)  # lazy
    assert isinstance(parsed.parts[0].rows, list)  # the JSON, parsed whole
    assert len(lazy) == len(parsed) == len(reference) > 0
    for ours, theirs, seed_guide in zip(lazy, parsed, reference, strict=True):
        moved = {**theirs, "video": seed_guide["video"]}  # the copy lives elsewhere
        assert ours == seed_guide == moved


def test_two_files_concatenate_and_slices_and_subsets_stay_lazy(training_dir):
    specs = [str(training_dir / "train.json"), str(training_dir / "val.json")]
    both = load_samples(specs)
    train, val = load_samples(specs[:1]), load_samples(specs[1:])
    assert [s["id"] for s in both] == [s["id"] for s in train] + [s["id"] for s in val]
    assert [s["id"] for s in both[2:5]] == [s["id"] for s in list(both)[2:5]]
    assert both.column("frames").tolist() == [30] * len(both)
    assert set(both.column("problem", fill=None).tolist()) == {None}


def test_an_edited_json_is_read_instead_of_its_older_store(training_dir, tmp_path, capsys):
    copy = tmp_path / "training"
    shutil.copytree(training_dir, copy)
    rows = json.loads((copy / "train.json").read_text())
    time.sleep(0.01)
    (copy / "train.json").write_text(json.dumps(rows[:3]))
    assert len(load_samples([str(copy / "train.json")])) == 3
    assert "changed after train.arrow was written; reading the JSON" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["train.json", "train.json%50"])
def test_the_train_mean_is_summed_in_bulk_as_over_every_sample(training_dir, json_only, spec):
    for folder in (training_dir, json_only):
        samples = load_samples([str(folder / spec)], seed=3)
        expected = np.mean([record.pairs(s, "future") for s in samples], axis=0)
        np.testing.assert_allclose(mean_pairs(samples, "future"), expected, rtol=0, atol=1e-12)
