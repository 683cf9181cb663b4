"""One home for the answer format: grammar, formatter and parser agree; constrained decoding
makes every answer parse, batched or not; evaluation and training use it."""

from __future__ import annotations

import json
import random

import pytest
import xgrammar as xgr
from conftest import run_main, train_in_process
from xgrammar.testing import _is_grammar_accept_string as grammar_accepts

from qwenvl.answer import AnswerFormat, AnswerParseError, parse_pairs
from qwenvl.task import HORIZON_PAIRS

SMALL_VIDEO = {"VIDEO_MIN_PIXELS": str(32 * 32), "VIDEO_MAX_PIXELS": str(16 * 32 * 32)}
DECIMALS = [(1, 3), (2, 4), (0, 2), (3, 6)]


@pytest.mark.parametrize("decimals", DECIMALS)
def test_every_formatted_answer_matches_the_grammar_and_parses_back(decimals):
    fmt = AnswerFormat(*decimals)
    grammar = xgr.Grammar.from_ebnf(fmt.grammar())
    rng = random.Random(sum(decimals))
    for _ in range(1000):
        # The data's range (reversing to highway speed, tight turns both ways) and beyond it.
        pairs = [
            (
                rng.uniform(-5, 45) * rng.choice([1, 1, 1, 3]),
                rng.uniform(-0.3, 0.3) * rng.choice([1, 1, 50]),
            )
            for _ in range(HORIZON_PAIRS)
        ]
        text = fmt.format(pairs)
        assert grammar_accepts(grammar, text), text
        assert parse_pairs(text) == [
            (_by_hand(v, decimals[0], 2), _by_hand(c, decimals[1], 1)) for v, c in pairs
        ]


def _by_hand(value: float, decimals: int, digits: int) -> float:
    """Rounded to the decimals, then held within the widest number of `digits` digits."""
    widest = 10**digits - 10.0**-decimals
    return min(max(round(value, decimals), -round(widest, decimals)), round(widest, decimals))


def test_values_outside_the_grammar_are_written_as_the_widest_of_their_sign():
    fmt = AnswerFormat()
    assert fmt.format([(123.4, -25.0)]) == "[(99.9, -9.999)]"
    assert fmt.format([(-0.04, 0.0004)]) == "[(0.0, 0.000)]"  # no "-0.0"


@pytest.mark.parametrize(
    "text",
    [
        "[" + ", ".join(["(1.0, 0.010)"] * 29) + "]",  # 29 pairs
        "[" + ", ".join(["(1.0, 0.010)"] * 31) + "]",  # 31 pairs
        "[" + ", ".join(["(-.5, 0.010)"] * 30) + "]",  # no digit before the point
        "[" + ", ".join(["(-, 0.010)"] * 30) + "]",  # a sign without its number
        "The car keeps going straight at about 10 m/s.",
        "[" + ", ".join(["(1.0, 0.010)"] * 30) + "] done",
    ],
)
def test_what_the_grammar_rejects_does_not_parse(text):
    grammar = xgr.Grammar.from_ebnf(AnswerFormat().grammar())
    assert not grammar_accepts(grammar, text)
    with pytest.raises(AnswerParseError):
        parse_pairs(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" + ", ".join(["(1.0, 0.01)"] * 30) + "]",  # curvature with 2 decimals, not 3
        "[" + ", ".join(["(01.0, 0.010)"] * 30) + "]",  # a leading zero
        "[" + ", ".join(["(100.0, 0.010)"] * 30) + "]",  # three integer digits of speed
    ],
)
def test_the_grammar_holds_the_format_the_parser_reads_more_loosely(text):
    """Free decoding is judged on its numbers (the parser takes any decimals); constrained
    decoding writes exactly the format's."""
    grammar = xgr.Grammar.from_ebnf(AnswerFormat().grammar())
    assert not grammar_accepts(grammar, text)
    assert len(parse_pairs(text)) == HORIZON_PAIRS


def test_dataset_labels_match_the_grammar_of_their_format(training_dir):
    fmt = AnswerFormat.load(training_dir)
    grammar = xgr.Grammar.from_ebnf(fmt.grammar())
    for name in ("train.json", "test.json"):
        for sample in json.loads((training_dir / name).read_text()):
            assert grammar_accepts(grammar, sample["conversations"][1]["value"])


def test_untrained_model_constrained_answers_parse_and_batch_equals_single(
    tiny_model_dir, training_dir, monkeypatch
):
    for key, value in SMALL_VIDEO.items():
        monkeypatch.setenv(key, value)
    from qwenvl.data.samples import load_samples
    from qwenvl.inference.backend import Request
    from qwenvl.inference.spec import read_spec
    from qwenvl.inference.transformers_backend import TransformersBackend
    from qwenvl.video import decode_video

    backend = TransformersBackend.load(read_spec(str(tiny_model_dir)), device="cpu")
    samples = load_samples([str(training_dir / "test.json")])[:2]
    clips = [decode_video(s["video"], backend.spec.video) for s in samples]
    clips.append((clips[0][0][:, :, :64], clips[0][1]))  # narrower: a shorter, padded prompt
    prompt = backend.spec.user_prompt().user_text()
    requests = [Request.single(frames, fps, prompt) for frames, fps in clips]
    batched = [a.text for a in backend.answer(requests)]
    single = [backend.answer([r])[0].text for r in requests]
    assert batched == single
    assert all(len(parse_pairs(text)) == HORIZON_PAIRS for text in batched)
    free = backend.answer(requests[:1], constrained=False)[0].text
    with pytest.raises(AnswerParseError):  # the untrained model does not follow the format
        parse_pairs(free)


def test_evaluate_constrains_by_default_and_counts_failures_without(
    tiny_model_dir, training_dir, tmp_path, monkeypatch
):
    for key, value in SMALL_VIDEO.items():
        monkeypatch.setenv(key, value)  # a base model records no video settings

    def evaluate(out, *extra):
        test_json = training_dir / "test.json"
        run_main("evaluate", "--model-path", tiny_model_dir, "--test-json", test_json,
                 "--max-samples", "3", "--output-dir", out, *extra)  # fmt: skip
        return json.loads((out / "metrics.json").read_text())

    constrained = evaluate(tmp_path / "constrained")
    assert constrained["parse"] == {"total": 3, "parsed": 3, "rate": 1.0, "failures": {}}
    assert constrained["decoding"] == "constrained" and constrained["backend"] == "transformers"
    assert constrained["model"]["all"]["n"] == 3 and constrained["model"]["all"]["ade_m"] > 0
    free = evaluate(tmp_path / "free", "--no-constrained")
    assert free["decoding"] == "free" and free["parse"]["parsed"] < 3
    assert sum(free["parse"]["failures"].values()) == 3 - free["parse"]["parsed"]


def test_task_metrics_while_training_equal_evaluating_the_checkpoint(
    tiny_model_dir, training_dir, tmp_path
):
    """eval_ade and friends, logged at a checkpoint, are what evaluate.py finds for that
    checkpoint on the same validation clips: the same interface answers both."""
    out = tmp_path / "lora"
    env = {
        "MODEL_PATH": str(tiny_model_dir), "DATASETS": str(training_dir / "train.json"),
        "EVAL_DATASETS": str(training_dir / "val.json"), "EVAL_GENERATE_SAMPLES": "2",
        "OUTPUT_DIR": str(out), "MAX_STEPS": "2", "SAVE_STEPS": "2", "BATCH_SIZE": "2",
        "GRAD_ACCUM": "1", "DATALOADER_WORKERS": "0", "LR": "1e-2", **SMALL_VIDEO,
    }  # fmt: skip
    train_in_process("lora", env)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    logged = {key: value for entry in state["log_history"] for key, value in entry.items()}
    run_main("evaluate", "--model-path", out / "checkpoint-2", "--test-json",
             training_dir / "val.json", "--max-samples", "2", "--batch-size", "2",
             "--output-dir", tmp_path / "eval")  # fmt: skip
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"]["all"]
    assert evaluated["n"] == 2 and "eval_loss" in logged
    for name, key in (("ade", "ade_m"), ("fde", "fde_m"), ("speed_mae", "speed_mae"),
                      ("curvature_mae", "curvature_mae")):  # fmt: skip
        assert logged[f"eval_{name}"] == pytest.approx(evaluated[key], rel=1e-6, abs=1e-9), name
    # The time spent evaluating and generating is reported apart from training time, and holds
    # at least the evaluation loop's own runtime.
    compute = json.loads((out / "compute.json").read_text())
    assert compute["eval_seconds"] >= logged["eval_runtime"] > 0
    assert compute["train_seconds"] == pytest.approx(
        compute["wall_seconds"] - compute["eval_seconds"], abs=0.01
    )
