"""The launchers' checks of what the settings point at, before torchrun starts a process: the
files and folders, the GPUs and the process layout, the rendezvous port, a live run on the same
OUTPUT_DIR, and a resume that would train something else than its checkpoint did. A problem is
one line naming the variable (SettingError). torch is imported only where a GPU is listed, so on
a CPU this takes a fraction of a second."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from qwenvl.cli import UserError
from qwenvl.data import data_list, dataset_specs
from qwenvl.files import check_apart, check_apart_from_files, writable_parent
from qwenvl.train import config
from qwenvl.train.config import SettingError
from qwenvl.train.lock import refuse_if_held
from qwenvl.train.resume import ConvertFirst, find_resume_checkpoint, resume_changes

PROJECT = Path(__file__).resolve().parents[2]


def find_shipped_config(values: dict) -> None:
    """The DeepSpeed configs shipped beside the launchers are found there when the caller's
    folder has none of that name."""
    name = values.get("DEEPSPEED_CONFIG")
    if name and not Path(name).is_file() and (PROJECT / name).is_file():
        values["DEEPSPEED_CONFIG"] = str(PROJECT / name)


def check_datasets(values: dict) -> list[dict]:
    """The registry entries of DATASETS and EVAL_DATASETS (a name or a file that cannot be
    found is one line)."""
    entries = []
    for name in ("DATASETS", "EVAL_DATASETS"):
        text = values[name]
        try:
            entries += data_list(dataset_specs(text))
        except ValueError as err:
            if "," in text and Path(text.partition("%")[0]).expanduser().exists():
                raise SettingError(
                    f"{name}={text}: commas separate datasets, and this path holds one; "
                    "rename the folder or link it from a path without a comma"
                ) from None
            raise SettingError(f"{name}: {err}") from None
    if not dataset_specs(values["DATASETS"]):
        raise SettingError("DATASETS is empty: name the training data")
    return entries


def check_paths(values: dict) -> None:
    """OUTPUT_DIR, DATASETS, DEEPSPEED_CONFIG and a local MODEL_PATH, as the caller names them;
    OUTPUT_DIR apart from every input (the data's folders and the folders of their videos)."""
    output = Path(values["OUTPUT_DIR"])
    if output.exists() and not output.is_dir():
        raise SettingError(f"OUTPUT_DIR={output}: is a file, not a folder")
    entries = check_datasets(values)
    deepspeed = values["DEEPSPEED_CONFIG"]
    if deepspeed and not Path(deepspeed).is_file():
        raise SettingError(f"DEEPSPEED_CONFIG={deepspeed}: no such file")
    model = values["MODEL_PATH"]
    # A hub id is "org/name"; anything else that does not exist was meant as a local folder.
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not Path(model).expanduser().exists():
        raise SettingError(f"MODEL_PATH={model}: no such folder (nor a hub id like org/name)")
    inputs = {"MODEL_PATH": model}
    for number, entry in enumerate(entries):
        # The data's folder (its videos, the converter's output), named in full.
        label = f"the data folder of {entry['annotation_path']}" if number else "DATASETS"
        inputs[label] = Path(entry["annotation_path"]).expanduser().absolute().parent
    try:
        check_apart(output, inputs)
        for entry in entries:
            check_apart_from_files(
                output, f"the videos of {entry['annotation_path']}", video_folders(entry)
            )
        writable_parent(output / "checkpoint-0")
    except UserError as err:
        raise SettingError(f"OUTPUT_DIR={err}") from None


def video_folders(entry: dict) -> set[str]:
    """The folders of a training file's videos, from its store's column where it has one."""
    from qwenvl.data.samples import video_folders_of

    return video_folders_of(Path(entry["annotation_path"]), entry["data_path"])


def check_master_port(values: dict) -> None:
    """A port the user set must be free on the node that listens on it (node 0, when the master
    address is this machine). It is tried as torchrun binds it (SO_REUSEADDR): a port held by a
    live process is refused, one whose last run just died (its sockets in TIME_WAIT) is not."""
    port = values["MASTER_PORT"]
    if values["NNODES"] > 1 and values["MASTER_ADDR"] in ("127.0.0.1", "localhost"):
        print(
            f"warning: NNODES={values['NNODES']} with MASTER_ADDR={values['MASTER_ADDR']}: "
            "the other nodes would wait on their own loopback; set MASTER_ADDR to node 0's "
            "address",
            file=sys.stderr,
        )
    if port is None or values["NODE_RANK"] != 0 or not _is_this_machine(values["MASTER_ADDR"]):
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            raise SettingError(
                f"MASTER_PORT={port}: already in use on this machine (another run?); pick a "
                "free port, or leave MASTER_PORT unset on one node to get one"
            ) from None


def _is_this_machine(address: str) -> bool:
    if address in ("localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_resume(values: dict, kind: str) -> dict[str, object]:
    """A run resumed into OUTPUT_DIR must train what its checkpoint trained; where the number
    of processes changed, the global batch is kept through GRAD_ACCUM (the settings to change,
    returned) or the change is refused with the way out."""
    if not values["RESUME"]:
        return {}
    checkpoint = find_resume_checkpoint(values["OUTPUT_DIR"])
    if checkpoint is None:
        return {}
    try:
        return resume_changes(checkpoint, values, kind)
    except ConvertFirst as err:
        raise SettingError(f"OUTPUT_DIR={values['OUTPUT_DIR']}: {err}") from None
    except ValueError as err:
        raise SettingError(
            f"OUTPUT_DIR={values['OUTPUT_DIR']}: {err}; resume with the same settings, or "
            "start afresh with RESUME=0 or another OUTPUT_DIR"
        ) from None


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


def layout(values: dict, env: dict) -> dict[str, object]:
    """NPROC_PER_NODE (one per visible GPU, 1 on a CPU), OMP_NUM_THREADS (the cores per rank:
    DeepSpeed's CPU Adam of ZeRO-3 offload is OpenMP, and torchrun would set 1), PRECISION
    (auto: bf16 on GPUs, fp32 on a CPU) and, across nodes, MASTER_PORT."""
    filled = {}
    gpus = gpu_layout(env)
    if values["NPROC_PER_NODE"] is None:
        filled["NPROC_PER_NODE"] = max(gpus, 1)
    nproc = filled.get("NPROC_PER_NODE") or values["NPROC_PER_NODE"]
    if values["OMP_NUM_THREADS"] is None:
        filled["OMP_NUM_THREADS"] = max(1, (os.cpu_count() or 1) // nproc)
    if values["MASTER_PORT"] is None and values["NNODES"] > 1:
        filled["MASTER_PORT"] = config.MULTI_NODE_PORT
    if values["PRECISION"] == "auto":
        filled["PRECISION"] = "bf16" if gpus else "fp32"
    return filled


def check_quantization(values: dict) -> None:
    """QUANT=4bit (QLoRA) needs CUDA and bitsandbytes, and no DeepSpeed; this loads torch only
    when it is set."""
    quant = values.get("QUANT")
    if not quant:
        return
    if values["DEEPSPEED_CONFIG"]:
        raise SettingError(f"QUANT={quant}: QLoRA runs without DeepSpeed (DEEPSPEED_CONFIG=)")
    from qwenvl.model import quantization_config

    try:
        quantization_config(quant)
    except ValueError as err:
        raise SettingError(str(err)) from None


def preflight(env: dict, kind: str) -> dict[str, object]:
    """Every setting of the `kind` launcher as a typed value, its defaults filled in and
    checked against the machine and OUTPUT_DIR; SettingError names the first problem."""
    values = config.resolve(env, kind)
    find_shipped_config(values)
    check_paths(values)
    values.update(layout(values, env))
    check_quantization(values)
    check_master_port(values)
    if values["NODE_RANK"] == 0:
        try:
            refuse_if_held(values["OUTPUT_DIR"])
        except UserError as err:
            raise SettingError(str(err)) from None
    values.update(check_resume(values, kind))
    return values
