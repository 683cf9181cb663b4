"""The launchers' pre-flight, before torchrun starts a process: the defaults that the settings'
dataclasses own (LoRA, video), the process layout (a process per visible GPU, CPU threads per
rank), and every setting checked, a bad one being one line naming the variable (exit 2).

scripts/launch_common.sh runs `python -m qwenvl.train.preflight lora|full` and evaluates what it
prints: one `export NAME=value` line per setting it fills in. torch is imported only where a
GPU is listed, so on a CPU this takes a fraction of a second.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from qwenvl.cli import UserError
from qwenvl.data import data_list, dataset_specs
from qwenvl.files import check_apart
from qwenvl.train.resume import find_resume_checkpoint
from qwenvl.train.settings import LoraSettings, Tuning
from qwenvl.video import VideoSettings

TRUE = ("1", "true", "True", "yes")
FALSE = ("0", "false", "False", "no")


class SettingError(ValueError):
    """A launcher setting that cannot run; str() is the one line."""


def defaults(kind: str) -> dict[str, str]:
    """The defaults the dataclasses own, as the launchers' variables."""
    values = {}
    if kind == "lora":
        lora = LoraSettings()
        values.update(LORA_R=lora.r, LORA_ALPHA=lora.alpha, LORA_DROPOUT=lora.dropout)
    video = VideoSettings()
    for field in fields(VideoSettings):
        values[f"VIDEO_{field.name.upper()}"] = getattr(video, field.name)
    return {name: f"{value:g}" for name, value in values.items()}


def number(env: dict, name: str, kind: type = int, minimum: float | None = 1) -> float:
    raw = env.get(name, "")
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise SettingError(f"{name}={raw}: not {what}") from None
    if minimum is not None and value < minimum:
        raise SettingError(f"{name}={raw}: must be at least {minimum:g}")
    return value


def flag(env: dict, name: str) -> bool:
    raw = env.get(name, "")
    if raw in TRUE or raw in FALSE:
        return raw in TRUE
    raise SettingError(f"{name}={raw}: expected True or False")


def check_numbers(env: dict, kind: str) -> None:
    """Counts, rates and steps: what torchrun and the Trainer would otherwise reject after the
    model has loaded, or accept and train nothing with."""
    for name in ("BATCH_SIZE", "GRAD_ACCUM", "SAVE_STEPS", "LOGGING_STEPS", "MODEL_MAX_LENGTH"):
        number(env, name)
    for name in ("SAVE_TOTAL_LIMIT", "NNODES", "NPROC_PER_NODE"):
        number(env, name)
    for name in ("DATALOADER_WORKERS", "EVAL_GENERATE_SAMPLES", "SEED", "NODE_RANK"):
        number(env, name, minimum=0)
    if number(env, "NODE_RANK", minimum=0) >= number(env, "NNODES"):
        raise SettingError(f"NODE_RANK={env['NODE_RANK']}: must be below NNODES={env['NNODES']}")
    if number(env, "LR", float, minimum=None) <= 0:
        raise SettingError(f"LR={env['LR']}: must be positive")
    max_steps = number(env, "MAX_STEPS", minimum=-1)
    if max_steps == 0:
        raise SettingError("MAX_STEPS=0: nothing would train (-1 trains for EPOCHS)")
    if max_steps < 0 and number(env, "EPOCHS", float, minimum=None) <= 0:
        raise SettingError(f"EPOCHS={env['EPOCHS']}: nothing would train (set EPOCHS > 0)")
    for name in ("MM_PROJECTOR_LR", "VISION_TOWER_LR"):
        if env.get(name) and number(env, name, float, minimum=None) <= 0:
            raise SettingError(f"{name}={env[name]}: must be positive")
    if number(env, "EVAL_GENERATE_SAMPLES", minimum=0) and not env.get("EVAL_DATASETS"):
        raise SettingError("EVAL_GENERATE_SAMPLES needs validation data: set EVAL_DATASETS")
    for name in ("TUNE_MM_VISION", "TUNE_MM_MLP", "TUNE_MM_LLM"):
        flag(env, name)
    if env.get("PRECISION", "auto") not in ("auto", "bf16", "fp32"):
        raise SettingError(f"PRECISION={env['PRECISION']}: expected auto, bf16 or fp32")
    if not any(flag(env, n) for n in ("TUNE_MM_VISION", "TUNE_MM_MLP", "TUNE_MM_LLM")):
        raise SettingError(
            "TUNE_MM_VISION, TUNE_MM_MLP and TUNE_MM_LLM are all False: nothing trains"
        )
    if kind == "lora":
        number(env, "LORA_R")
        number(env, "LORA_ALPHA")
        if not 0 <= number(env, "LORA_DROPOUT", float, minimum=None) < 1:
            raise SettingError(f"LORA_DROPOUT={env['LORA_DROPOUT']}: must lie in [0, 1)")
    try:
        VideoSettings(
            number(env, "VIDEO_FPS", float, minimum=None),
            *(number(env, f"VIDEO_{n}") for n in ("MIN_FRAMES", "MAX_FRAMES")),
            *(number(env, f"VIDEO_{n}") for n in ("MIN_PIXELS", "MAX_PIXELS")),
        )
    except ValueError as err:
        raise SettingError(str(err)) from None


def check_paths(env: dict) -> None:
    """OUTPUT_DIR, DATASETS, DEEPSPEED_CONFIG and a local MODEL_PATH, as the caller names them."""
    output = Path(env["OUTPUT_DIR"])
    if output.exists() and not output.is_dir():
        raise SettingError(f"OUTPUT_DIR={output}: is a file, not a folder")
    for name in ("DATASETS", "EVAL_DATASETS"):
        try:
            data_list(dataset_specs(env.get(name, "")))
        except ValueError as err:
            raise SettingError(f"{name}: {err}") from None
    config = env.get("DEEPSPEED_CONFIG", "")
    if config and not Path(config).is_file():
        raise SettingError(f"DEEPSPEED_CONFIG={config}: no such file")
    model = env["MODEL_PATH"]
    # A hub id is "org/name"; anything else that does not exist was meant as a local folder.
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not Path(model).expanduser().exists():
        raise SettingError(f"MODEL_PATH={model}: no such folder (nor a hub id like org/name)")
    inputs = {"MODEL_PATH": model}
    for name in ("DATASETS", "EVAL_DATASETS"):
        for number, entry in enumerate(data_list(dataset_specs(env.get(name, "")))):
            # The data's folder (its videos, the converter's output), named in full.
            inputs[f"{name} ({entry['annotation_path']})" if number else name] = (
                Path(entry["annotation_path"]).expanduser().absolute().parent
            )
    try:
        check_apart(output, inputs)
    except UserError as err:
        raise SettingError(f"OUTPUT_DIR={err}") from None


def check_master_port(env: dict) -> None:
    """The rendezvous port must be free on the node that listens on it (node 0, when the
    master address is this machine)."""
    port = number(env, "MASTER_PORT")
    if port > 65535:
        raise SettingError(f"MASTER_PORT={port}: not a port (1..65535)")
    if number(env, "NODE_RANK", minimum=0) != 0 or not _is_this_machine(env["MASTER_ADDR"]):
        return
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            raise SettingError(
                f"MASTER_PORT={port}: already in use on this machine (another run?); pick a "
                "free port"
            ) from None


def _is_this_machine(address: str) -> bool:
    if address in ("localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_resume(env: dict, kind: str) -> None:
    """A run resumed into OUTPUT_DIR must train the way its checkpoint was trained."""
    if env.get("RESUME", "1") in FALSE:
        return
    checkpoint = find_resume_checkpoint(env["OUTPUT_DIR"])
    if checkpoint is None:
        return
    try:
        trained = Tuning.load(checkpoint)
    except ValueError as err:
        raise SettingError(str(err)) from None
    if trained is None:
        return
    wanted = Tuning.of_launcher(env, kind)
    differing = trained.differences(wanted)
    if differing:
        raise SettingError(
            f"OUTPUT_DIR={env['OUTPUT_DIR']}: its {checkpoint.name} was trained with "
            f"{differing}; resume with the same settings, or start afresh with RESUME=0 or "
            "another OUTPUT_DIR"
        )


def visible_gpus(env: dict) -> tuple[int, str | None]:
    """(GPUs nvidia-smi lists that CUDA_VISIBLE_DEVICES leaves visible, the driver version)."""
    if shutil.which("nvidia-smi") is None:
        return 0, None
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0, None
    drivers = [line.strip() for line in listing.stdout.splitlines() if line.strip()]
    if listing.returncode != 0 or not drivers:
        return 0, None
    count = len(drivers)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip()]))
    return count, drivers[0]


def gpu_layout(env: dict) -> int:
    """GPUs this node trains on: those nvidia-smi lists and torch can use. A GPU that torch
    cannot use (a driver older than the CUDA torch was built for) is one line, never a run
    that silently trains on the CPU."""
    listed, driver = visible_gpus(env)
    if not listed:
        return 0
    import torch

    from qwenvl.model import cuda_problem

    problem = cuda_problem()
    if problem is None:
        return torch.cuda.device_count()
    raise SettingError(
        f"nvidia-smi lists {listed} GPU(s) with driver {driver}, but {problem}; update the "
        "driver (or install a torch built for this one) rather than train on the CPU"
    )


def layout(env: dict) -> dict[str, str]:
    """NPROC_PER_NODE (one per visible GPU, 1 on a CPU) and OMP_NUM_THREADS (the cores per
    rank: DeepSpeed's CPU Adam of ZeRO-3 offload is OpenMP, and torchrun would set 1)."""
    filled = {}
    gpus = gpu_layout(env)
    if not env.get("NPROC_PER_NODE"):
        filled["NPROC_PER_NODE"] = str(max(gpus, 1))
    nproc = int(filled.get("NPROC_PER_NODE") or number(env, "NPROC_PER_NODE"))
    if not env.get("OMP_NUM_THREADS"):
        filled["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return filled


def check_quantization(env: dict, kind: str) -> None:
    """QUANT=4bit (QLoRA) needs CUDA and bitsandbytes; this loads torch only when it is set."""
    quant = env.get("QUANT", "")
    if not quant:
        return
    if kind != "lora":
        raise SettingError(f"QUANT={quant}: quantization is for the LoRA launcher (QLoRA)")
    from qwenvl.model import quantization_config

    try:
        quantization_config(quant)
    except ValueError as err:
        raise SettingError(str(err)) from None


def preflight(env: dict, kind: str) -> dict[str, str]:
    """The settings to fill in (name -> value); SettingError names the first bad one."""
    filled = {name: value for name, value in defaults(kind).items() if not env.get(name)}
    env = {**env, **filled}
    check_paths(env)
    filled.update(layout(env))
    env = {**env, **filled}
    check_numbers(env, kind)
    check_quantization(env, kind)
    check_master_port(env)
    check_resume(env, kind)
    return filled


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind = argv[0] if argv else ""
    if kind not in ("lora", "full"):
        print("usage: python -m qwenvl.train.preflight lora|full", file=sys.stderr)
        return 2
    try:
        filled = preflight(dict(os.environ), kind)
    except SettingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, value in filled.items():
        if not re.fullmatch(r"[A-Z_]+", name):
            raise AssertionError(name)
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
