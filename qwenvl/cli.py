"""Command-line plumbing every script shares: one-line user errors, the one entry shape of a
script, and the options of the scripts that run a model."""

from __future__ import annotations

import argparse
import errno
import shutil
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


class DiskFull(UserError):
    """The disk filled up while writing; str() names the path."""


# What a full disk looks like from the C++ writers (torch.save, PyAV) that do not say ENOSPC.
_FULL_DISK_MESSAGES = ("No space left", "basic_ios::clear", "PytorchStreamWriter failed writing")


def disk_full(err: BaseException, where: str | None = None) -> bool:
    """Whether `err` is a write that failed for want of space (or quota). torch.save may say
    only that its file came out shorter than written ("unexpected pos"): with `where`, the
    folder written to, a write error there with next to no space left counts as full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(err, OSError | RuntimeError):
        return False
    if any(text in str(err) for text in _FULL_DISK_MESSAGES):
        return True
    try:
        return where is not None and shutil.disk_usage(where).free < 16 * 1024**2
    except OSError:
        return False


def run_script(
    parse_args: Callable[[list[str] | None], object],
    run: Callable[[object], int | None],
    argv: list[str] | None = None,
) -> int:
    """Every script's main: parse its arguments, run it, and end a user error or Ctrl-C with
    one line and a non-zero status."""
    try:
        return run(parse_args(argv)) or 0
    except UserError as err:
        _end_progress_bars()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:
        if not disk_full(err):
            raise
        _end_progress_bars()
        where = getattr(err, "filename", None) or "the output"
        print(f"error: {where}: no space left on device ({_first_line(err)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _end_progress_bars() -> None:
    """Close the progress bars a failure left open, so the error is the last line (a bar
    closed at exit would print itself after it)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def add_inference_arguments(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """Options every script that runs a model shares (--dtype: those that answer with it)."""
    parser.add_argument(
        "--base-model",
        help="base model of a LoRA adapter (default: the one recorded in the adapter)",
    )
    parser.add_argument(
        "--device",
        help="where the model runs: cpu, cuda or cuda:N (default: cuda when there is a GPU)",
    )
    if not dtype:
        return
    parser.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="weights' dtype: auto is bf16 on a GPU, fp32 on a CPU; bf16 on a CPU runs it as a "
        "GPU would (default: %(default)s)",
    )


# The backends qwenvl.inference.opener opens by name, as the scripts' --backend offers them.
BACKENDS = ("transformers", "vllm")


def add_generation_arguments(parser: argparse.ArgumentParser, free_help: str) -> None:
    """Options of the scripts that generate answers: budget and decoding."""
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="generation budget (default: fitted to the widest answer of the model's format)",
    )
    parser.add_argument(
        "--no-constrained", dest="constrained", action="store_false", help=free_help
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="transformers",
        help="what generates the answers: transformers, or vLLM from its own environment "
        "(make vllm; see docs/evaluation.md) (default: %(default)s)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="transformers backend on CUDA: compile the decoding step (torch.compile); off by "
        "default, since the first batch then waits for the compilation",
    )
    parser.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="vLLM backend: GPUs one model is spread over (vLLM's own tensor parallelism) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--vllm-merged-dir",
        help="vLLM backend: where an adapter vLLM cannot serve as it is (it trains the "
        "projector in full, or its base is 4-bit) is merged in fp32 first (default: a folder "
        "beside the adapter, NAME-merged-fp32)",
    )
