"""The ranks of a torchrun job, for the scripts and loops that spread work over them: which rank
this is, its share of a list, everyone's results gathered back in the list's order, and leaving
cleanly. Evaluation spreads test.json over ranks with these; so do the task metrics while
training."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); under torchrun the process group is set up here when it is not yet
    (NCCL with GPUs, gloo without); (0, 1) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            # Each rank on its own GPU before NCCL starts, or every rank's tensors land on GPU 0.
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl", device_id=device)
        else:
            torch.distributed.init_process_group("gloo")
    return torch.distributed.get_rank(), world


def share(items: Sequence[T], rank: int, world: int) -> list[tuple[int, T]]:
    """This rank's share of `items`: every world-th one from `rank`, with its index (only its
    share is read)."""
    return [(index, items[index]) for index in range(rank, len(items), world)]


def gather_in_order(indexed: list[tuple[int, T]], world: int) -> list[T]:
    """Every rank's (index, result) pairs on every rank, as results in index order: the order
    of the list that was shared, whatever the world size."""
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, indexed)
        indexed = [pair for part in gathered for pair in part]
    return [result for _, result in sorted(indexed, key=lambda pair: pair[0])]


def die_with_parent() -> None:
    """A torchrun worker dies with its agent (Linux): torchrun starts workers in sessions of
    their own, so a killed launcher would leave them training on, into the same OUTPUT_DIR as
    the relaunch that follows a crash."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the agent died before the call: nobody waits for this rank
        os._exit(1)


def relaunch_under_torchrun(script: str, argv: list[str]) -> None:
    """NPROC_PER_NODE=N without torchrun: run `script` again under torchrun, N ranks, through
    qwenvl.train.torchrun (a rank's user error ends the job with its one line). torchrun picks
    a free port itself unless MASTER_PORT is set, which is then used as given. A bad
    NPROC_PER_NODE or MASTER_PORT is one line, exit status 2."""
    if "WORLD_SIZE" in os.environ:
        return
    values = {}
    for name, low, high in (("NPROC_PER_NODE", 1, None), ("MASTER_PORT", 1, 65535)):
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
            bounds = f"{low}..{high}" if high else f"at least {low}"
            print(f"error: {name}={raw}: expected an integer, {bounds}", file=sys.stderr)
            sys.exit(2)
        values[name] = int(raw)
    nproc = values.get("NPROC_PER_NODE", 1)
    if nproc > 1:
        command = [sys.executable, "-m", "qwenvl.train.torchrun", "--nproc_per_node", str(nproc)]
        if "MASTER_PORT" in values:
            addr = os.environ.get("MASTER_ADDR") or "127.0.0.1"
            command += ["--master_addr", addr, "--master_port", str(values["MASTER_PORT"])]
        else:
            command.append("--standalone")
        os.execv(sys.executable, [*command, script, *argv])


def leave(status: int, hard_exit: bool = False) -> int:
    """End a rank once every rank is done: wait for the others, then close the process group.

    `hard_exit` leaves without interpreter teardown instead, once all is written: with gloo
    and DeepSpeed threads still alive, teardown sometimes aborts a rank after a successful run
    ("terminate called without an active exception"), which fails the whole job.
    """
    if not torch.distributed.is_initialized():
        return status
    torch.distributed.barrier()
    if hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    torch.distributed.destroy_process_group()
    return status
