"""Compute report of a training run: time, device-hours, throughput, FLOPs, MFU, peak memory.

Written as compute.json in OUTPUT_DIR and in every checkpoint, so a resumed run adds its time
to what the checkpoint it resumed from had spent.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from qwenvl.files import atomic_write_text
from qwenvl.train.setup import parameter_counts

logger = logging.getLogger(__name__)
REPORT_FILE = "compute.json"
# Dense bf16 peak per GPU, TFLOP/s: NVIDIA's datasheets (H100, H200, A100, L40S) halve their
# "with sparsity" figures. The names are torch.cuda.get_device_name()'s; the variants (PCIe, NVL)
# are matched before their family, which names the SXM part. Other devices get no MFU unless
# PEAK_TFLOPS gives their peak.
PEAK_BF16_TFLOPS = (
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H100", 989.0),  # SXM5: "NVIDIA H100 80GB HBM3"
    ("NVIDIA H200 NVL", 835.0),
    ("NVIDIA H200", 989.0),  # SXM
    ("NVIDIA GH200", 989.0),
    ("NVIDIA H800 PCIe", 756.0),
    ("NVIDIA H800", 989.0),
    ("NVIDIA A100", 312.0),  # SXM4 and PCIe alike
    ("NVIDIA A800", 312.0),
    ("NVIDIA L40S", 362.0),
)
FLOPS_FORMULA = (
    "tokens x (4 x parameters + 2 x trained parameters): forward 2N and activation gradients 2N "
    "through the whole model, weight gradients 2N for trained weights only (6N for a full "
    "fine-tune, as MFU is usually quoted); recomputation by gradient checkpointing and "
    "attention are not counted, and vision patches are counted as the tokens they merge into"
)


def peak_tflops(device_name: str, env_value: str | None) -> float | None:
    """The assumed bf16 peak of one device, from PEAK_TFLOPS or the table; None if unknown."""
    if env_value:
        return float(env_value)
    for name, tflops in PEAK_BF16_TFLOPS:
        if device_name == name or device_name.startswith((f"{name} ", f"{name}-")):
            return tflops
    return None


def peak_memory_gib() -> float:
    """This process's peak: GPU memory allocated on CUDA, resident set size on the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def estimated_flops(tokens: int, parameters: int, trained: int) -> int:
    """Training FLOPs by FLOPS_FORMULA."""
    return tokens * (4 * parameters + 2 * trained)


def build_report(
    previous: dict,
    seconds: float,
    state,
    world_size: int,
    batch_per_step: int,
    parameters: tuple[int, int],
    device_name: str,
    peak: float | None,
    memory_gib: list[float],
) -> dict:
    """compute.json's content: this run's seconds added to `previous` (a resumed run's)."""
    wall = previous.get("wall_seconds", 0.0) + seconds
    tokens = int(state.num_input_tokens_seen or 0)
    samples = state.global_step * batch_per_step
    total, trained = parameters
    flops = estimated_flops(tokens, total, trained)
    device_hours = wall * world_size / 3600
    mfu = flops / (wall * world_size * peak * 1e12) if peak and wall > 0 else None
    return {
        "wall_seconds": wall,
        "device": device_name,
        "processes": world_size,
        "device_hours": device_hours,
        "steps": state.global_step,
        "samples": samples,
        "tokens": tokens,
        "samples_per_second": samples / wall if wall else 0.0,
        "tokens_per_second": tokens / wall if wall else 0.0,
        "parameters": total,
        "trained_parameters": trained,
        "estimated_flops": flops,
        "flops_formula": FLOPS_FORMULA,
        "peak_tflops_per_device": peak,
        "mfu": mfu,
        "peak_memory_gib_per_rank": memory_gib,
        "runs": previous.get("runs", 0) + 1,
    }


def summary_line(report: dict) -> str:
    mfu = f"{100 * report['mfu']:.1f}%" if report["mfu"] is not None else "n/a (unknown peak)"
    hours = "GPU" if report["device"] != "cpu" else "CPU process"
    return (
        f"compute: {report['wall_seconds'] / 3600:.2f} h wall, {report['device_hours']:.2f} "
        f"{hours}-hours, {report['samples_per_second']:.2f} samples/s, "
        f"{report['tokens_per_second']:.0f} tokens/s, {report['estimated_flops']:.3g} FLOPs, "
        f"MFU {mfu}, peak memory {max(report['peak_memory_gib_per_rank']):.1f} GiB per rank"
    )


class ComputeReport(TrainerCallback):
    """Times the run and writes compute.json at each save and at the end (rank 0 writes)."""

    def __init__(self, peak_env: str | None = None) -> None:
        self.peak_env = peak_env
        self.previous: dict = {}
        self.start = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        resumed = Path(args.output_dir) / f"checkpoint-{state.global_step}" / REPORT_FILE
        if state.global_step > 0 and resumed.is_file():
            self.previous = json.loads(resumed.read_text())

    def report(self, args, state, model) -> dict:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        memory = [peak_memory_gib()]
        if torch.distributed.is_initialized() and args.world_size > 1:
            gathered: list = [None] * args.world_size
            torch.distributed.all_gather_object(gathered, memory[0])
            memory = gathered
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        return build_report(
            self.previous,
            time.monotonic() - self.start,
            state,
            args.world_size,
            batch * args.world_size,
            parameter_counts(model),
            device,
            peak_tflops(device, self.peak_env),
            memory,
        )

    def _write(self, args, state, model, directory: Path) -> dict:
        report = self.report(args, state, model)
        if state.is_world_process_zero:
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(directory / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        return report

    def on_save(self, args, state, control, model=None, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._write(args, state, model, checkpoint)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        report = self._write(args, state, model, Path(args.output_dir))
        if state.is_world_process_zero:
            logger.info(summary_line(report))
            print(summary_line(report), flush=True)
