"""One home for the training settings: every value finite and in range or one line, known words
only for switches, a misspelt setting named with the right one, and the same defaults and
checks whether the launchers run train.py or a user runs it directly."""

from __future__ import annotations

import pytest
from conftest import script_module

from qwenvl.train import config, launch
from qwenvl.train.config import SettingError


def _resolve(kind: str = "lora", **env) -> dict:
    return config.resolve({k: str(v) for k, v in env.items()}, kind)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("LR", "nan", "LR=nan: not a finite number"),
        ("LR", "inf", "LR=inf: not a finite number"),
        ("LR", "0", "LR=0: must be positive"),
        ("LR", "abc", "LR=abc: not a number"),
        ("EPOCHS", "nan", "EPOCHS=nan: not a finite number"),
        ("EPOCHS", "-1", "EPOCHS=-1: must be at least 0"),
        ("WARMUP_RATIO", "1", "WARMUP_RATIO=1: must be below 1"),
        ("LORA_DROPOUT", "1.5", "LORA_DROPOUT=1.5: must be below 1"),
        ("MAX_BAD_SAMPLES", "2", "MAX_BAD_SAMPLES=2: must be at most 1"),
        ("MASTER_PORT", "70000", "MASTER_PORT=70000: must be at most 65535"),
        ("BATCH_SIZE", "2.5", "BATCH_SIZE=2.5: not an integer"),
        ("RESUME", "nah", "RESUME=nah: expected one of 1, true, yes, on, 0, false, no, off"),
        ("LR_SCHEDULER", "cosin", "LR_SCHEDULER=cosin: expected one of cosine, linear"),
        ("QUANT", "8bit", 'QUANT=8bit: expected one of "", 4bit'),
        ("VIDEO_MIN_FRAMES", "40", "need 1 <= VIDEO_MIN_FRAMES <= VIDEO_MAX_FRAMES"),
    ],
)
def test_a_value_that_cannot_run_is_one_line_naming_it(name, value, message):
    with pytest.raises(SettingError) as caught:
        _resolve(**{name: value})
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "word, expected", [("off", False), ("OFF", False), ("0", False), ("no", False),
                       ("on", True), ("True", True), ("yes", True), ("1", True)]
)  # fmt: skip
def test_switches_take_known_words_only(word, expected):
    assert _resolve(RESUME=word)["RESUME"] is expected


@pytest.mark.parametrize(
    "given, meant",
    [("LEARNING_RATE", "LR"), ("EPOCH", "EPOCHS"), ("NUM_GPUS", "NPROC_PER_NODE"),
     ("BATCH", "BATCH_SIZE"), ("VIDEO_MAX_PIXEL", "VIDEO_MAX_PIXELS"),
     ("LORA_ALHPA", "LORA_ALPHA")],
)  # fmt: skip
def test_a_setting_that_is_not_ours_but_looks_like_one_is_named_with_ours(given, meant):
    with pytest.raises(SettingError, match=f"{given}=3: not a setting .* did you mean {meant}\\?"):
        _resolve(**{given: 3})
    _resolve(HOME="/root", PATH="/bin", CUDA_VISIBLE_DEVICES="0")  # the rest of the environment


def test_the_launcher_says_it_in_one_line_before_torchrun(capsys, monkeypatch):
    monkeypatch.setenv("LEARNING_RATE", "abc")
    assert launch.main(["lora"]) == 2
    out = capsys.readouterr()
    assert out.err.strip() == (
        "error: LEARNING_RATE=abc: not a setting of the launchers; did you mean LR? (--help "
        "lists them)"
    )
    assert "resolved settings" not in out.out


def test_help_lists_every_setting_with_this_launchers_default(capsys):
    assert launch.main(["full", "--help"]) == 0
    text = capsys.readouterr().out
    for setting in config.settings_of("full"):
        assert f"  {setting.name} " in text
    assert "LORA_R" not in text and "zero3.json" in text and "cosine" in text


def test_presets_differ_only_where_the_seed_guide_says():
    lora, full = config.defaults("lora"), config.defaults("full")
    assert (lora["LR"], lora["EPOCHS"], lora["BATCH_SIZE"], lora["GRAD_ACCUM"]) == (2e-4, 5, 4, 2)
    assert (full["LR"], full["EPOCHS"], full["BATCH_SIZE"], full["GRAD_ACCUM"]) == (1e-5, 3, 2, 4)
    assert lora["LR_SCHEDULER"] == full["LR_SCHEDULER"] == "cosine"
    assert lora["WARMUP_RATIO"] == full["WARMUP_RATIO"] == 0.03


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_train_py_run_directly_trains_as_the_launcher_would(kind, tmp_path):
    """The same schedule, warmup, weight decay and preset whether launched or run directly."""
    train = script_module("train")
    direct = ["--output_dir", str(tmp_path)] + (["--lora_enable", "True"] if kind == "lora" else [])
    _, _, args = train.parse_args(direct)
    values = config.resolve({"OUTPUT_DIR": str(tmp_path)}, kind)
    launched = train.parse_args(config.train_arguments(values, kind))[2]
    for name in ("lr_scheduler_type", "warmup_steps", "weight_decay", "learning_rate",
                 "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "save_total_limit", "logging_steps", "save_steps", "seed"):  # fmt: skip
        assert getattr(args, name) == getattr(launched, name), name
    assert str(args.lr_scheduler_type) in ("cosine", "SchedulerType.COSINE")
    assert args.warmup_steps == 0.03 and args.prediction_loss_only


def test_train_py_run_directly_checks_values_as_the_launchers_do(tmp_path, capsys):
    train = script_module("train")
    code = train.main(["--output_dir", str(tmp_path), "--learning_rate", "nan"])
    assert code == 2 and "LR=nan: not a finite number" in capsys.readouterr().err
