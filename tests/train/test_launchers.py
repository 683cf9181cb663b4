"""The launchers for real: LoRA overfits, ZeRO-3 on two CPU ranks, two nodes, crash and resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import LORA_RUN, ROOT, free_port, launcher_env, run_script
from safetensors.torch import load_file

from qwenvl.train.resume import find_resume_checkpoint

_env = launcher_env


def _losses(output_dir: Path) -> list[float]:
    state = (
        json.loads((output_dir / "trainer_state.json").read_text())
        if (output_dir / "trainer_state.json").exists()
        else None
    )
    if state is None:
        newest = find_resume_checkpoint(output_dir)
        state = json.loads((newest / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def test_lora_launcher_overfits_four_samples(tiny_model_dir, four_samples, tmp_path):
    out = tmp_path / "lora"
    result = run_script(
        "./train_physical_ai_lora.sh",
        env=_env(
            tiny_model_dir, four_samples, out, MAX_STEPS=30, BATCH_SIZE=4, LR="1e-2", SAVE_STEPS=30
        ),
    )
    assert "== resolved settings ==" in result.stdout and "LORA_R             64" in result.stdout
    assert "attention sdpa" in result.stderr + result.stdout
    losses = _losses(out / "checkpoint-30")
    assert len(losses) == 30 and losses[-1] < losses[0] / 2
    from peft import PeftModel
    from transformers import Qwen3VLForConditionalGeneration

    assert (out / "adapter_model.safetensors").is_file() and (out / "video_settings.json").is_file()
    for saved in (out, out / "checkpoint-30"):  # each usable alone, by us or plain transformers
        assert json.loads((saved / "answer_format.json").read_text())["curvature_decimals"] == 3
        video_config = json.loads((saved / "processor_config.json").read_text())["video_processor"]
        assert video_config["fps"] == 30 and video_config["max_frames"] == 32
        assert video_config["size"]["longest_edge"] == 16 * 32 * 32 * 30
    base = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(out))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    trained = load_file(out / "adapter_model.safetensors")
    assert any("merger" in k for k in trained)  # the projector trains in full with LoRA


def _load_full(path: Path):
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration.from_pretrained(path)


@pytest.mark.parametrize("config", ["zero3.json", "zero3_offload.json"])
def test_full_launcher_runs_deepspeed_zero3_on_two_cpu_ranks(
    tiny_model_dir, four_samples, tmp_path, config
):
    out = tmp_path / "full"
    # With plain ZeRO-3 the run also logs task metrics: the ranks generate in step, each with
    # its share of the weights (one evaluation, at its checkpoint).
    metrics = (
        {"EVAL_DATASETS": four_samples.parent / "val.json", "EVAL_GENERATE_SAMPLES": 2}
        if config == "zero3.json"
        else {}
    )
    result = run_script(
        "./train_physical_ai.sh",
        env=_env(
            tiny_model_dir,
            four_samples,
            out,
            NPROC_PER_NODE=2,
            MAX_STEPS=2,
            BATCH_SIZE=1,
            SAVE_STEPS=2,
            DEEPSPEED_CONFIG=config,
            MM_PROJECTOR_LR="1e-4",
            **metrics,
        ),
    )
    assert f"DEEPSPEED_CONFIG   {config}" in result.stdout
    # The Trainer's per-module groups survive DeepSpeed's wrapping of the optimizer.
    log = result.stdout + result.stderr
    assert "groups: " in log and "mlp=0.0001" in log and "llm=1e-05" in log
    assert "vision" not in log.split("groups: ")[1].splitlines()[0]  # frozen: no group
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logged = {key for entry in state["log_history"] for key in entry}
    assert ("eval_ade" in logged) == bool(metrics) and ("eval_fde" in logged) == bool(metrics)
    assert list((out / "checkpoint-2").glob("global_step2/*optim_states.pt"))  # ZeRO shards
    model = _load_full(out)
    base = _load_full(tiny_model_dir)
    llm = "model.language_model.layers.0.self_attn.q_proj.weight"
    vision = "model.visual.blocks.0.attn.qkv.weight"
    trained, original = model.state_dict(), base.state_dict()
    assert not torch.equal(trained[llm], original[llm])  # the LLM trained (gathered on save)
    assert torch.equal(trained[vision], original[vision])  # the vision tower stayed frozen


def test_two_nodes_on_one_machine_train_as_one_job(tiny_model_dir, four_samples, tmp_path):
    out = tmp_path / "nodes"
    port = free_port()
    procs, logs = [], [tmp_path / "node0.log", tmp_path / "node1.log"]
    for rank in (0, 1):
        env = {
            **os.environ,
            **_env(
                tiny_model_dir,
                four_samples,
                out,
                NNODES=2,
                NODE_RANK=rank,
                NPROC_PER_NODE=1,
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                MAX_STEPS=2,
                BATCH_SIZE=1,
                SAVE_STEPS=2,
            ),
        }
        with open(logs[rank], "w") as log:
            procs.append(
                subprocess.Popen(
                    ["./train_physical_ai.sh"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        time.sleep(1.0)  # the master node listens first
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # One job of world size 2: each of the 2 steps consumed one sample per node.
    assert state["train_batch_size"] == 1 and state["log_history"][-1]["epoch"] == pytest.approx(
        1.0
    )
    _load_full(out)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


def test_sigkilled_lora_run_resumes_to_the_same_weights(
    tiny_model_dir, four_samples, lora_run, tmp_path
):
    reference = lora_run  # the same settings, never interrupted
    crashed = tmp_path / "crashed"
    env = {**os.environ, **_env(tiny_model_dir, four_samples, crashed, **LORA_RUN)}
    proc = subprocess.Popen(
        ["./train_physical_ai_lora.sh"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not (crashed / "checkpoint-4" / "compute.json").exists():  # written last
        assert proc.poll() is None and time.monotonic() < deadline, (
            "run ended before its 2nd checkpoint"
        )
        time.sleep(0.05)
    time.sleep(0.3)  # let the checkpoint's last files land, as after a real crash
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (crashed / "adapter_model.safetensors").exists()  # killed before the end

    result = run_script(
        "./train_physical_ai_lora.sh", env=_env(tiny_model_dir, four_samples, crashed, **LORA_RUN)
    )
    resumed_from = re.search(r"resuming from (\S+)", result.stderr + result.stdout)
    assert resumed_from
    final_state = json.loads((crashed / "checkpoint-8" / "trainer_state.json").read_text())
    assert final_state["global_step"] == 8
    # compute.json: the resumed run adds its time to the checkpoint's; counts match one run.
    once = json.loads((reference / "compute.json").read_text())
    before = json.loads((Path(resumed_from[1]) / "compute.json").read_text())
    total = json.loads((crashed / "compute.json").read_text())
    assert once["runs"] == before["runs"] == 1 and total["runs"] == 2
    assert total["wall_seconds"] > before["wall_seconds"] > 0
    assert total["samples"] == once["samples"] == 16 and total["tokens"] == once["tokens"] > 0
    assert total["estimated_flops"] == once["estimated_flops"] and once["mfu"] is None  # CPU
    assert len(total["peak_memory_gib_per_rank"]) == 1 and "compute: " in result.stdout
    expected, got = _adapter(reference), _adapter(crashed)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)


def test_truncated_newest_checkpoint_is_skipped(lora_run, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(lora_run, out)
    assert find_resume_checkpoint(out) == out / "checkpoint-8"
    for step in (6, 4):
        shutil.rmtree(out / f"checkpoint-{step}")
    weights = out / "checkpoint-8" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert find_resume_checkpoint(out) == out / "checkpoint-2"
    assert "skipping incomplete checkpoint" in caplog.text and "is truncated" in caplog.text
    optimizer = out / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    assert find_resume_checkpoint(out) is None
    shutil.rmtree(out / "checkpoint-2")
    (out / "checkpoint-8" / "trainer_state.json").write_text('{"global_step": ')
    assert find_resume_checkpoint(out) is None


def test_resume_0_starts_fresh_and_relative_paths_are_the_callers(
    tiny_model_dir, four_samples, lora_run, tmp_path
):
    """From another folder, with relative paths: they name the caller's files (not the
    project's), and RESUME=0 trains afresh beside complete checkpoints."""
    caller = tmp_path / "caller"
    caller.mkdir()
    shutil.copytree(lora_run, caller / "run")
    shutil.copytree(tiny_model_dir, caller / "model")
    (caller / "data").mkdir()  # the data's folder is an input: the run lies beside it
    samples = json.loads(four_samples.read_text())
    for sample in samples:  # the videos as seen from the copy's folder
        sample["video"] = str(four_samples.parent / sample["video"])
    (caller / "data" / "four.json").write_text(json.dumps(samples))
    env = _env("model", "data/four.json", "run", RESUME=0, MAX_STEPS=2, BATCH_SIZE=2, SAVE_STEPS=2)
    started = time.time()
    result = run_script(str(ROOT / "train_physical_ai_lora.sh"), env=env, cwd=caller)
    assert "resuming from" not in result.stderr + result.stdout
    assert "AUTO_RESUME" not in result.stdout and "RESUME             0" in result.stdout
    written = caller / "run" / "checkpoint-2" / "trainer_state.json"
    assert written.stat().st_mtime >= started  # trained afresh, into the caller's run/
    assert json.loads(written.read_text())["global_step"] == 2
    assert not (ROOT / "run").exists() and not (ROOT / "model").exists()
