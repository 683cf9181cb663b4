"""The two launchers' body: settings from the environment (qwenvl.train.config), the
pre-flight (qwenvl.train.preflight), the resolved settings printed, then torchrun running
scripts/train.py on every process. A bad setting is one line and exit status 2 before torchrun
starts; a user error inside training ends the job with its one line and exit status 2 too.

    python -m qwenvl.train.launch lora|full [train.py arguments ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qwenvl.train import config
from qwenvl.train.config import SettingError

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"


def torchrun_arguments(values: dict) -> list[str]:
    """torchrun's own arguments: one node without a MASTER_PORT lets torchrun pick a free port
    (two jobs on one machine never collide); a set port, or several nodes, rendezvous at
    MASTER_ADDR:MASTER_PORT."""
    if values["NNODES"] == 1 and values["MASTER_PORT"] is None:
        return ["--standalone", "--nproc_per_node", str(values["NPROC_PER_NODE"])]
    return [
        "--nnodes", str(values["NNODES"]), "--node_rank", str(values["NODE_RANK"]),
        "--nproc_per_node", str(values["NPROC_PER_NODE"]),
        "--master_addr", values["MASTER_ADDR"], "--master_port", str(values["MASTER_PORT"]),
    ]  # fmt: skip


def print_settings(values: dict) -> None:
    print("== resolved settings ==")
    for name, value in values.items():
        shown = config.shown(value)
        if name == "MASTER_PORT" and value is None:
            shown = "auto (a free port on this node)"
        print(f"  {name:<22} {shown}")
    print(f"  {'CUDA_VISIBLE_DEVICES':<22} {os.environ.get('CUDA_VISIBLE_DEVICES', '<all>')}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind, extra = (argv[0], argv[1:]) if argv else ("", [])
    if kind not in config.KINDS:
        print(
            "usage: python -m qwenvl.train.launch lora|full [train.py arguments]", file=sys.stderr
        )
        return 2
    if extra[:1] in (["-h"], ["--help"]):
        print(config.help_text(kind))
        return 0
    from qwenvl.train.preflight import preflight

    try:
        values = preflight(dict(os.environ), kind)
    except SettingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_settings(values)
    os.environ["OMP_NUM_THREADS"] = str(values["OMP_NUM_THREADS"])
    from qwenvl.train import torchrun

    args = [*torchrun_arguments(values), str(TRAIN_SCRIPT)]
    return torchrun.main([*args, *config.train_arguments(values, kind), *extra])


if __name__ == "__main__":
    sys.exit(main())
