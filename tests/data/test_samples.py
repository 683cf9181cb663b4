"""The training files at scale: the Arrow store read lazily yields exactly the samples the JSON
gives (and the seed guide's way of reading it), in order and for every name%pct subset."""

from __future__ import annotations

import json
import os
import random
import shutil
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


def test_the_store_is_used_only_for_the_json_it_was_written_from(training_dir, tmp_path, capsys):
    """The store is tied to its JSON by content: an edit dated back, or another dataset's store
    copied in, is never trained on; the JSON is read instead, with a line saying why."""
    copy = tmp_path / "training"
    shutil.copytree(training_dir, copy)
    train, val = copy / "train.json", copy / "val.json"
    stat = train.stat()
    first = json.loads(train.read_text())[0]["id"]
    # The same size, and the mtime set back to before the store: only the content tells.
    train.write_text(train.read_text().replace(f'"{first}"', f'"{first[:-2]}99"', 1))
    assert train.stat().st_size == stat.st_size
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))
    assert load_samples([str(train)])[0]["id"] == f"{first[:-2]}99"
    assert "train.arrow was not written from this train.json" in capsys.readouterr().out
    # Another split's store copied beside this JSON: the same.
    shutil.copyfile(copy / "test.arrow", val.with_suffix(".arrow"))
    shutil.copyfile(copy / "test.arrow.json", val.with_suffix(".arrow.json"))
    ids = [s["id"] for s in load_samples([str(val)])]
    assert ids == [r["id"] for r in json.loads(val.read_text())]
    assert "val.arrow was not written from this val.json" in capsys.readouterr().out


def test_a_swapped_prompt_json_or_a_truncated_store_is_one_line(training_dir, tmp_path):
    from qwenvl.chat import PromptSettings

    copy = tmp_path / "training"
    shutil.copytree(training_dir, copy)
    PromptSettings(ego_history_seconds=1.0).save(copy)  # another dataset's prompt
    with pytest.raises(ValueError, match="prompt.json: not the prompt train.json was written"):
        load_samples([str(copy / "train.json")])
    shutil.copyfile(training_dir / "prompt.json", copy / "prompt.json")
    store = copy / "test.arrow"
    store.write_bytes(store.read_bytes()[: store.stat().st_size // 2])
    with pytest.raises(ValueError, match="test.arrow: cannot be read"):
        load_samples([str(copy / "test.json")])


@pytest.mark.parametrize("spec", ["train.json", "train.json%50"])
def test_the_train_mean_is_summed_in_bulk_as_over_every_sample(training_dir, json_only, spec):
    for folder in (training_dir, json_only):
        samples = load_samples([str(folder / spec)], seed=3)
        expected = np.mean([record.pairs(s, "future") for s in samples], axis=0)
        np.testing.assert_allclose(mean_pairs(samples, "future"), expected, rtol=0, atol=1e-12)
