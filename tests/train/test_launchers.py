"""The launchers for real: LoRA overfits, ZeRO-3 on two CPU ranks, two nodes, crash and resume."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
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
            tiny_model_dir, four_samples, out, MAX_STEPS=15, BATCH_SIZE=4, LR="1e-2", SAVE_STEPS=15
        ),
    )
    assert "== resolved settings ==" in result.stdout
    assert re.search(r"^  LORA_R +64$", result.stdout, re.M)
    assert "attention sdpa" in result.stderr + result.stdout
    losses = _losses(out / "checkpoint-15")
    assert len(losses) == 15 and losses[-1] < losses[0] / 2
    from peft import PeftModel
    from transformers import Qwen3VLForConditionalGeneration

    assert (out / "adapter_model.safetensors").is_file() and (out / "video_settings.json").is_file()
    for saved in (out, out / "checkpoint-15"):  # each usable alone, by us or plain transformers
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


def _zero3(model, data, out: Path, config: str, *args: str, **extra):
    env = _env(model, data, out, NPROC_PER_NODE=2, BATCH_SIZE=1, SAVE_STEPS=2,
               DEEPSPEED_CONFIG=config, MM_PROJECTOR_LR="1e-4", **extra)  # fmt: skip
    return run_script("./train_physical_ai.sh", *args, env=env)


@pytest.fixture(scope="module")
def zero3_run(tiny_model_dir, four_samples, tmp_path_factory) -> tuple[Path, str]:
    """Full fine-tuning under ZeRO-3 on two CPU ranks, with task metrics at each checkpoint
    (the ranks generate in step, each with its share of the weights)."""
    out = tmp_path_factory.mktemp("zero3") / "full"
    metrics = {"EVAL_DATASETS": four_samples.parent / "val.json", "EVAL_GENERATE_SAMPLES": 2}
    result = _zero3(tiny_model_dir, four_samples, out, "zero3.json", MAX_STEPS=4, **metrics)
    return out, result.stdout + result.stderr


def _check_zero3_training(out: Path, log: str, config: str, model: Path) -> None:
    assert re.search(rf"^  DEEPSPEED_CONFIG +\S*{config}$", log, re.M)
    # The Trainer's per-module groups survive DeepSpeed's wrapping of the optimizer.
    assert "groups: " in log and "mlp=0.0001" in log and "llm=1e-05" in log
    assert "vision" not in log.split("groups: ")[1].splitlines()[0]  # frozen: no group
    assert list((out / "checkpoint-2").glob("global_step2/*optim_states.pt"))  # ZeRO shards
    trained, original = _load_full(out).state_dict(), _load_full(model).state_dict()
    llm = "model.language_model.layers.0.self_attn.q_proj.weight"
    vision = "model.visual.blocks.0.attn.qkv.weight"
    assert not torch.equal(trained[llm], original[llm])  # the LLM trained (gathered on save)
    assert torch.equal(trained[vision], original[vision])  # the vision tower stayed frozen


def test_full_launcher_runs_deepspeed_zero3_on_two_cpu_ranks(zero3_run, tiny_model_dir):
    out, log = zero3_run
    _check_zero3_training(out, log, "zero3.json", tiny_model_dir)
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    evaluations = [e for e in state["log_history"] if "eval_ade" in e]
    assert [e["step"] for e in evaluations] == [2, 4] and all(
        e["eval_fde"] >= 0 for e in evaluations
    )


@pytest.fixture(scope="module")
def offload_run(tiny_model_dir, four_samples, tmp_path_factory) -> tuple[Path, str]:
    """Full fine-tuning under ZeRO-3 with parameters and optimizer on the CPU, on two CPU ranks,
    computing every position's logits (--label_only_logits False): the same data, seed and
    first step as zero3_run, which computes them only where there are labels."""
    out = tmp_path_factory.mktemp("offload") / "full"
    result = _zero3(tiny_model_dir, four_samples, out, "zero3_offload.json",
                    "--label_only_logits", "False", MAX_STEPS=2)  # fmt: skip
    return out, result.stdout + result.stderr


def test_label_only_loss_matches_full_logits_under_zero3_on_two_cpu_ranks(zero3_run, offload_run):
    """The ZeRO-3 run computes logits only where there are labels (the default, with the
    partitioned lm_head gathered); the same first step with every position's logits gives
    the same loss (the first loss comes before any optimizer step, offloaded or not)."""
    out = offload_run[0]
    assert _training_args(zero3_run[0] / "checkpoint-2" / "training_args.bin").label_only_logits
    assert not _training_args(out / "checkpoint-2" / "training_args.bin").label_only_logits
    assert _losses(out / "checkpoint-2")[0] == pytest.approx(_losses(zero3_run[0])[0], abs=1e-5)


def test_full_launcher_runs_deepspeed_zero3_offload_on_two_cpu_ranks(offload_run, tiny_model_dir):
    out, log = offload_run
    _check_zero3_training(out, log, "zero3_offload.json", tiny_model_dir)


def test_a_zero3_run_of_two_ranks_resumes_on_one_once_converted(
    zero3_run, tiny_model_dir, four_samples, tmp_path, capsys, monkeypatch
):
    """A ZeRO-3 checkpoint is sharded by the 2 ranks that wrote it: on 1 rank the launcher first
    says so with DeepSpeed's own conversion command; once converted, the relaunch loads the
    universal checkpoint, keeps the global batch through GRAD_ACCUM, and trains on."""
    from qwenvl.train import launch

    out = tmp_path / "full"
    shutil.copytree(zero3_run[0], out)
    shutil.rmtree(out / "checkpoint-4")  # as if the 2-rank run had stopped after step 2
    env = _env(tiny_model_dir, four_samples, out, NPROC_PER_NODE=1, BATCH_SIZE=1, SAVE_STEPS=2,
               DEEPSPEED_CONFIG="zero3.json", MM_PROJECTOR_LR="1e-4", MAX_STEPS=4)  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launch.main(["full"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was written by 2 ZeRO-3 processes and this run has 1" in line
    command = re.search(r"`(python -m deepspeed\.checkpoint\.ds_to_universal [^`]+)`", line)[1]
    subprocess.run([sys.executable, *command.split()[1:]], check=True, capture_output=True)
    result = run_script("./train_physical_ai.sh", env=env)
    log = result.stdout + result.stderr
    assert f"resuming from {out / 'checkpoint-2'}" in log
    assert "GRAD_ACCUM 1 -> 2 keeps a global batch of 2" in log
    groups = log.split("groups: ")[1].splitlines()[0]
    assert "mlp=0.0001" in groups and "llm=1e-05" in groups  # each group its own, as trained
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert state["global_step"] == 4 and all(math.isfinite(loss) for loss in losses)
    compute = json.loads((out / "compute.json").read_text())
    assert [s["processes"] for s in compute["segments"]] == [2, 1]
    assert [s["steps"] for s in compute["segments"]] == [2, 2]
    assert compute["device_hours"] == pytest.approx(
        (compute["segments"][0]["wall_seconds"] * 2 + compute["segments"][1]["wall_seconds"]) / 3600
    )
    record = json.loads((out / "checkpoint-4" / "training.json").read_text())
    assert record["world_size"] == 1 and record["settings"]["GRAD_ACCUM"] == 2


def test_two_nodes_on_one_machine_train_and_evaluate_as_one_job(
    tiny_model_dir, four_samples, tmp_path
):
    """Two nodes of one process each form one job of world size 2 (LoRA); its evaluation runs
    on both ranks over validation answers of different lengths, and keeps no logits (which
    could not be gathered across ranks): the loss is all it reports."""
    from transformers import AutoTokenizer

    val = four_samples.parent / "val.json"
    answers = [s["conversations"][1]["value"] for s in json.loads(val.read_text())]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len({len(tokenizer(a).input_ids) for a in answers}) > 1  # answers differ in length
    out = tmp_path / "nodes"
    port = free_port()
    procs, logs = [], [tmp_path / "node0.log", tmp_path / "node1.log"]
    for rank in (0, 1):
        env = {
            **os.environ,
            **_env(tiny_model_dir, four_samples, out, NNODES=2, NODE_RANK=rank,
                   NPROC_PER_NODE=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, MAX_STEPS=2,
                   BATCH_SIZE=1, SAVE_STEPS=2, EVAL_DATASETS=val),
        }  # fmt: skip
        with open(logs[rank], "w") as log:
            procs.append(
                subprocess.Popen(
                    ["./train_physical_ai_lora.sh"],
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
    assert state["train_batch_size"] == 1
    assert state["log_history"][-1]["epoch"] == pytest.approx(1.0)
    assert any("eval_loss" in entry for entry in state["log_history"])
    args = _training_args(out / "checkpoint-2" / "training_args.bin")
    assert args.prediction_loss_only and args.eval_strategy == "steps"
    assert json.loads((out / "checkpoint-2" / "training.json").read_text())["world_size"] == 2


def _training_args(path: Path):
    """A checkpoint's training_args.bin (pickled with train.py as __main__)."""
    import pickle
    import types

    from conftest import script_module

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "__main__":
                return getattr(script_module("train"), name)
            return super().find_class(module, name)

    return torch.load(
        path,
        weights_only=False,
        pickle_module=types.SimpleNamespace(
            Unpickler=Unpickler, load=pickle.load, __name__="pickle"
        ),
    )


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


def test_a_killed_run_relaunched_at_once_on_its_port_resumes_to_the_same_weights(
    tiny_model_dir, four_samples, lora_run, tmp_path
):
    """As a scheduler or a user relaunches after a crash: the launcher killed with SIGKILL (its
    ranks die with it), then the same command at once, on the same MASTER_PORT (its sockets in
    TIME_WAIT): no wait, no other port. It resumes from the newest complete checkpoint, takes
    over the dead run's lock, and ends with the weights of a run never interrupted."""
    reference = lora_run  # the same settings, never interrupted
    crashed = tmp_path / "crashed"
    env = _env(tiny_model_dir, four_samples, crashed, **LORA_RUN)
    proc = subprocess.Popen(
        ["./train_physical_ai_lora.sh"],
        cwd=ROOT,
        env={**os.environ, **env},
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
    newest = find_resume_checkpoint(crashed)
    assert newest is not None and newest.name != "checkpoint-2"  # the newest, not the oldest
    assert not (crashed / "adapter_model.safetensors").exists()  # killed before the end

    result = run_script("./train_physical_ai_lora.sh", env=env)  # at once, the same port
    log = result.stderr + result.stdout
    assert re.search(r"resuming from (\S+)", log)[1] == str(newest)
    assert f"taking over the lock of {crashed}" in log
    final_state = json.loads((crashed / "checkpoint-8" / "trainer_state.json").read_text())
    assert final_state["global_step"] == 8
    # compute.json: the resumed run adds its segment to the checkpoint's; counts match one run.
    once = json.loads((reference / "compute.json").read_text())
    before = json.loads((newest / "compute.json").read_text())
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
    assert re.search(r"^  RESUME +False$", result.stdout, re.M)
    written = caller / "run" / "checkpoint-2" / "trainer_state.json"
    assert written.stat().st_mtime >= started  # trained afresh, into the caller's run/
    assert json.loads(written.read_text())["global_step"] == 2
    assert not (ROOT / "run").exists() and not (ROOT / "model").exists()


def test_two_jobs_on_one_machine_without_a_port_both_run_and_a_third_into_one_is_refused(
    tiny_model_dir, four_samples, tmp_path
):
    """Without MASTER_PORT each launcher lets torchrun pick a free port, so two jobs started
    together on one machine both train; a third launched into a running job's OUTPUT_DIR is one
    line, exit 2, and touches nothing there (the running job's lock)."""
    jobs, logs = [], []
    for name in ("a", "b"):
        env = _env(tiny_model_dir, four_samples, tmp_path / name, MAX_STEPS=3, SAVE_STEPS=3)
        del env["MASTER_PORT"]
        logs.append(tmp_path / f"{name}.log")
        with open(logs[-1], "w") as log:
            jobs.append(
                subprocess.Popen(
                    ["./train_physical_ai_lora.sh"], cwd=ROOT, env={**os.environ, **env},
                    stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
    lock = tmp_path / "a" / ".training.lock"
    deadline = time.monotonic() + 300
    while not lock.exists():
        assert jobs[0].poll() is None and time.monotonic() < deadline, logs[0].read_text()[-2000:]
        time.sleep(0.1)
    third = _env(tiny_model_dir, four_samples, tmp_path / "a", MAX_STEPS=3, SAVE_STEPS=3)
    del third["MASTER_PORT"]
    refused = run_script("./train_physical_ai_lora.sh", env=third, check=False)
    holder = json.loads(lock.read_text())
    assert refused.returncode == 2, refused.stderr
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: OUTPUT_DIR={tmp_path / 'a'}: a run on {holder['host']} (pid {holder['pid']}"
        )
    )
    codes = [job.wait(timeout=600) for job in jobs]
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    for name, log in zip(("a", "b"), logs, strict=True):
        assert re.search(r"^  MASTER_PORT +auto", log.read_text(), re.M)
        state = json.loads((tmp_path / name / "checkpoint-3" / "trainer_state.json").read_text())
        assert state["global_step"] == 3
    assert not lock.exists()  # released at the end
