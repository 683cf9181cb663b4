"""No output is, contains or lies inside an input: every script with an output folder refuses
one, before touching anything, with or without --overwrite-output, through symlinks too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, run_script, script_main, snapshot

RELATIONS = ["is", "lies inside", "contains", "symlink"]


def _output_for(relation: str, source: Path, tmp_path: Path) -> Path:
    if relation == "is":
        return source
    if relation == "lies inside":
        return source / "out"
    if relation == "contains":
        return source.parent
    link = tmp_path / "link"
    link.symlink_to(source, target_is_directory=True)
    return link


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, raw_dataset, segments_dir, training_dir, tmp_path_factory) -> dict:
    """Copies of each script's input (a refusal that failed would delete the session's)."""
    base = tmp_path_factory.mktemp("inputs")
    copies = {}
    for name, source in (
        ("raw", raw_dataset),
        ("segments", segments_dir),
        ("hf", training_dir.parent / "hf"),
        ("model", tiny_model_dir),
    ):
        copies[name] = base / name / name  # each alone in a folder: "contains" is its parent
        shutil.copytree(source, copies[name], symlinks=True)
    adapter = base / "adapter" / "adapter"
    adapter.mkdir(parents=True)
    config = {"base_model_name_or_path": str(copies["model"]), "peft_type": "LORA"}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    copies["adapter"] = adapter
    copies["test_json"] = training_dir / "test.json"
    return copies


CASES = {
    "prepare_video_segments": ("raw", lambda i, o: ["--data-dir", i["raw"], "--output-dir", o]),
    "prepare_huggingface_dataset": (
        "segments",
        lambda i, o: ["--segments-dir", i["segments"], "--output-dir", o],
    ),
    "convert_to_training_format": ("hf", lambda i, o: ["--input-dir", i["hf"], "--output-dir", o]),
    "evaluate": (
        "model",
        lambda i, o: ["--model-path", i["model"], "--test-json", i["test_json"], "--output-dir", o],
    ),
    "merge_lora": ("adapter", lambda i, o: ["--adapter-path", i["adapter"], "--output-dir", o]),
}


@pytest.mark.parametrize("relation", RELATIONS)
@pytest.mark.parametrize("script", sorted(CASES))
def test_an_output_overlapping_an_input_is_refused(inputs, script, relation, tmp_path, capsys):
    name, arguments = CASES[script]
    source = inputs[name]
    before = snapshot(source.parent)
    output = _output_for(relation, source, tmp_path)
    argv = [str(a) for a in arguments(inputs, output)] + ["--overwrite-output"]
    assert script_main(script)(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and "apart from every input" in error[-1]
    shown = "is" if relation == "symlink" else relation
    assert f"the output {shown} the input" in error[-1]
    assert snapshot(source.parent) == before  # not a byte of the input changed


def test_merge_refuses_an_output_inside_the_adapters_base_model(inputs, tmp_path, capsys):
    argv = ["--adapter-path", str(inputs["adapter"]), "--output-dir", str(inputs["model"] / "m")]
    assert script_main("merge_lora")(argv) == 2
    assert "the input its base model" in capsys.readouterr().err


def test_comparison_is_not_written_inside_an_evaluation(tmp_path, capsys):
    evaluation = tmp_path / "eval" / "base"
    evaluation.mkdir(parents=True)
    metrics = {"parse": {"total": 1}, "model": {}, "baselines": {}}
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    before = snapshot(evaluation)
    argv = [f"base={evaluation}", "--output", str(evaluation / "metrics.json")]
    assert script_main("compare_evaluations")(argv) == 2
    assert "lies inside the input base=" in capsys.readouterr().err
    assert snapshot(evaluation) == before


@pytest.mark.parametrize("where", ["MODEL_PATH", "DATASETS"])
def test_launcher_output_dir_apart_from_the_model_and_the_data(
    tiny_model_dir, training_dir, tmp_path, where
):
    inside = {"MODEL_PATH": tiny_model_dir, "DATASETS": training_dir}[where] / "run"
    env = {
        "MODEL_PATH": str(tiny_model_dir),
        "DATASETS": str(training_dir / "train.json"),
        "OUTPUT_DIR": str(inside),
    }
    result = run_script(str(ROOT / "train_physical_ai_lora.sh"), env=env, check=False)
    assert result.returncode == 2 and "torch.distributed" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: OUTPUT_DIR={inside}")
    assert f"lies inside the input {where}" in result.stderr and not inside.exists()


def test_an_output_in_the_folder_of_the_videos_a_test_set_reads_is_refused(
    inputs, tmp_path, capsys
):
    """The inputs of evaluate.py include the files its test JSON points to: its videos, which
    live in the segments folder, not beside the JSON."""
    video = Path(json.loads(inputs["test_json"].read_text())[0]["video"])
    folder = (inputs["test_json"].parent / video).resolve().parent
    before = snapshot(folder)
    for output in (folder, folder / "eval", folder.parent):
        argv = ["--model-path", str(inputs["model"]), "--test-json", str(inputs["test_json"]),
                "--output-dir", str(output), "--overwrite-output"]  # fmt: skip
        assert script_main("evaluate")(argv) == 2
        error = capsys.readouterr().err.strip()
        assert "the videos of" in error and "apart from every input" in error
    assert snapshot(folder) == before


@pytest.mark.parametrize("option", ["--train-json", "--base-model"])
def test_evaluate_keeps_apart_from_the_train_json_and_the_base_model(
    inputs, tmp_path, capsys, option
):
    train = tmp_path / "train" / "train.json"
    train.parent.mkdir()
    train.write_text("[]")
    source = {"--train-json": train.parent, "--base-model": inputs["model"]}[option]
    value = {"--train-json": train, "--base-model": inputs["model"]}[option]
    argv = ["--model-path", str(inputs["adapter"]), option, str(value), "--test-json",
            str(inputs["test_json"]), "--output-dir", str(source / "eval")]  # fmt: skip
    assert script_main("evaluate")(argv) == 2
    assert "lies inside the input" in capsys.readouterr().err


def test_overwrite_replaces_only_an_output_folder_of_ours(inputs, tmp_path, capsys):
    """--overwrite-output never deletes a user's own folder or file: only one a script of this
    project wrote (it carries our mark)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    a_file = tmp_path / "report.txt"
    a_file.write_text("my report")
    for output, why in ((mine, "holds files this project did not write"),
                        (a_file, "is a file, not an output folder")):  # fmt: skip
        argv = ["--model-path", str(inputs["model"]), "--test-json", str(inputs["test_json"]),
                "--output-dir", str(output), "--overwrite-output"]  # fmt: skip
        assert script_main("evaluate")(argv) == 2
        assert why in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "my notes" and a_file.read_text() == "my report"


def test_predict_render_replaces_nothing_and_writes_into_no_input(inputs, tmp_path, capsys):
    video = inputs["test_json"].parent / json.loads(inputs["test_json"].read_text())[0]["video"]
    video = video.resolve()
    predict = script_main("predict")
    base = ["--model-path", str(inputs["model"]), str(video), "--render"]
    renders = tmp_path / "renders"
    renders.mkdir()
    (renders / f"{video.stem}.png").write_bytes(b"an earlier render")
    assert predict([*base, str(renders)]) == 2
    assert "pass --overwrite-output to replace them" in capsys.readouterr().err
    assert (renders / f"{video.stem}.png").read_bytes() == b"an earlier render"
    assert predict([*base, str(video.parent / "renders")]) == 2  # inside the clip's folder
    assert "the output lies inside the folder" in capsys.readouterr().err
    assert not (video.parent / "renders").exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert predict([*base, str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --render {a_file}: is a file, not a folder"


def test_train_py_run_directly_keeps_its_output_apart_from_the_data(
    tiny_model_dir, training_dir, capsys
):
    inside = training_dir / "run"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--dataset_use",
            str(training_dir / "train.json"), "--output_dir", str(inside)]  # fmt: skip
    assert script_main("train")(argv) == 2
    assert "lies inside the input DATASETS" in capsys.readouterr().err and not inside.exists()


def test_a_corrupt_metrics_json_is_one_line(tmp_path, capsys):
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text('{"parse": {"total": ')
    assert script_main("compare_evaluations")([f"a={evaluation}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {evaluation / 'metrics.json'}: not valid JSON")
    (evaluation / "metrics.json").write_text('{"parse": {}}')
    assert script_main("compare_evaluations")([f"a={evaluation}"]) == 2
    assert "not an evaluation's metrics (no model, baselines)" in capsys.readouterr().err
