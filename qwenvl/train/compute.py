"""Compute report of a training run: time, device-hours, throughput, FLOPs, MFU, peak memory.

Written as compute.json in OUTPUT_DIR and in every checkpoint. A run resumed on other GPUs is a
new segment of the same run: each segment keeps its own processes, batch, wall time, steps and
tokens, and the totals add the segments up (10 h on 8 GPUs then 1 h on 4 is 96 device-hours, not
the 44 that the last segment's world size times the total wall would say). Evaluation and
generation time is kept apart from training time, which alone enters MFU. Tokens are counted on
each rank without a host sync per step and summed across ranks only when the report is written.
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


def peak_tflops(device_name: str, given: float | str | None) -> float | None:
    """The assumed bf16 peak of one device, from PEAK_TFLOPS or the table; None if unknown."""
    if given:
        return float(given)
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


def earlier_segments(previous: dict) -> list[dict]:
    """The segments a resumed run's checkpoint reports (one for a report of an earlier version,
    which kept totals only)."""
    if "segments" in previous:
        return list(previous["segments"])
    if not previous:
        return []
    world = previous.get("processes", 1)
    return [
        {
            "processes": world,
            "device": previous.get("device", "?"),
            "global_batch": previous["samples"] // max(previous["steps"], 1),
            "wall_seconds": previous.get("wall_seconds", 0.0),
            "train_seconds": previous.get("wall_seconds", 0.0),
            "steps": previous.get("steps", 0),
            "samples": previous.get("samples", 0),
            "tokens": previous.get("tokens", 0),
        }
    ]


def build_report(
    segments: list[dict],
    parameters: tuple[int, int],
    peak: float | None,
    memory_gib: list[float],
) -> dict:
    """compute.json's content: the segments of the run (each as segment() gives it) and their
    totals; MFU over training time only, each segment's on its own number of devices."""
    total, trained = parameters
    wall = sum(s["wall_seconds"] for s in segments)
    train_device_seconds = sum(s["train_seconds"] * s["processes"] for s in segments)
    samples = sum(s["samples"] for s in segments)
    tokens = sum(s["tokens"] for s in segments)
    train_wall = sum(s["train_seconds"] for s in segments)
    flops = estimated_flops(tokens, total, trained)
    last = segments[-1]
    return {
        "wall_seconds": wall,
        "train_seconds": train_wall,
        "eval_seconds": sum(s.get("eval_seconds", 0.0) for s in segments),
        "device": last["device"],
        "processes": last["processes"],
        "device_hours": sum(s["wall_seconds"] * s["processes"] for s in segments) / 3600,
        "steps": sum(s["steps"] for s in segments),
        "samples": samples,
        "tokens": tokens,
        "samples_per_second": samples / train_wall if train_wall else 0.0,
        "tokens_per_second": tokens / train_wall if train_wall else 0.0,
        "parameters": total,
        "trained_parameters": trained,
        "estimated_flops": flops,
        "flops_formula": FLOPS_FORMULA,
        "peak_tflops_per_device": peak,
        "mfu": flops / (train_device_seconds * peak * 1e12)
        if peak and train_device_seconds > 0
        else None,
        "peak_memory_gib_per_rank": memory_gib,
        "runs": len(segments),
        "segments": segments,
    }


def summary_line(report: dict) -> str:
    mfu = f"{100 * report['mfu']:.1f}%" if report["mfu"] is not None else "n/a (unknown peak)"
    hours = "GPU" if report["device"] != "cpu" else "CPU process"
    return (
        f"compute: {report['wall_seconds'] / 3600:.2f} h wall ({report['eval_seconds']:.0f} s of "
        f"it evaluating), {report['device_hours']:.2f} {hours}-hours, "
        f"{report['samples_per_second']:.2f} samples/s, {report['tokens_per_second']:.0f} "
        f"tokens/s, {report['estimated_flops']:.3g} FLOPs, MFU {mfu}, peak memory "
        f"{max(report['peak_memory_gib_per_rank']):.1f} GiB per rank"
    )


class TokenCount:
    """Tokens trained on by this rank, summed on its device as batches pass (no host sync per
    step); total() sums every rank's, one collective, when a report is written."""

    def __init__(self) -> None:
        self.count: torch.Tensor | None = None

    def add(self, attention_mask: torch.Tensor) -> None:
        tokens = attention_mask.detach().sum()
        self.count = tokens if self.count is None else self.count + tokens

    def total(self) -> int:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        count = (self.count if self.count is not None else torch.zeros((), dtype=torch.long)).to(
            device
        )
        if torch.distributed.is_initialized():
            count = count.clone()
            torch.distributed.all_reduce(count)
        return int(count.item())


class ComputeReport(TrainerCallback):
    """Times the run and writes compute.json at each save and at the end (rank 0 writes).
    `tokens` counts what the trainer trained on; `eval_seconds` says how long evaluation and
    generation took so far."""

    def __init__(self, peak: float | None = None, tokens: TokenCount | None = None) -> None:
        self.peak = peak
        self.tokens = tokens or TokenCount()
        self.eval_seconds = lambda: 0.0
        self.earlier: list[dict] = []
        self.start, self.first_step = time.monotonic(), 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.monotonic(), state.global_step
        resumed = Path(args.output_dir) / f"checkpoint-{state.global_step}" / REPORT_FILE
        if state.global_step > 0 and resumed.is_file():
            self.earlier = earlier_segments(json.loads(resumed.read_text()))

    def segment(self, args, state) -> dict:
        """This segment of the run: its processes, batch, times, steps and tokens."""
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        wall = time.monotonic() - self.start
        evaluating = min(self.eval_seconds(), wall)
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        steps = state.global_step - self.first_step
        return {
            "processes": args.world_size,
            "device": device,
            "global_batch": batch * args.world_size,
            "wall_seconds": wall,
            "train_seconds": wall - evaluating,
            "eval_seconds": evaluating,
            "steps": steps,
            "samples": steps * batch * args.world_size,
            "tokens": self.tokens.total(),
        }

    def report(self, args, state, model) -> dict:
        memory = [peak_memory_gib()]
        if torch.distributed.is_initialized() and args.world_size > 1:
            gathered: list = [None] * args.world_size
            torch.distributed.all_gather_object(gathered, memory[0])
            memory = gathered
        segments = [*self.earlier, self.segment(args, state)]
        device = segments[-1]["device"]
        return build_report(
            segments, parameter_counts(model), peak_tflops(device, self.peak), memory
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
