"""A live run's lock on its output folder: two runs writing one OUTPUT_DIR would delete each
other's checkpoints (each rotates the folder's checkpoint-* to its own limit). The lock names the
process that holds it and its host; a lock whose process is gone (a crash, a kill) is taken over
with a line saying so."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from qwenvl.cli import UserError

LOCK_FILE = ".training.lock"
logger = logging.getLogger(__name__)


def _holder(folder: Path) -> dict | None:
    try:
        return json.loads((folder / LOCK_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # being written, or torn: its process is unknown


def _alive(pid: int) -> bool:
    """Whether a process of this host runs: one killed a moment ago may linger as a zombie
    until it is reaped, and is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def held_by_another(folder: str | Path) -> str | None:
    """Who holds the folder's lock, in words, when that may be a live run; None when nobody
    does or its process is gone from this host."""
    holder = _holder(Path(folder))
    if holder is None:
        return None
    host, pid = holder.get("host"), holder.get("pid")
    if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        return None
    since = holder.get("since", "?")
    return f"a run on {host or 'an unknown host'} (pid {pid}, since {since})"


def refuse_if_held(folder: str | Path, name: str = "OUTPUT_DIR") -> None:
    """UserError naming the live run that holds the folder."""
    holder = held_by_another(folder)
    if holder is not None:
        raise UserError(
            f"{name}={folder}: {holder} trains into it; wait for it, or choose another "
            f"{name} (if that run is gone, delete {Path(folder) / LOCK_FILE})"
        )


@contextmanager
def locked(folder: str | Path, name: str = "OUTPUT_DIR"):
    """Hold the folder's lock for the block: UserError when a live run holds it; a stale lock
    (its process gone from this host) is taken over with a warning."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            old = _holder(folder)
            refuse_if_held(folder, name)
            logger.warning(
                "taking over the lock of %s: its run (pid %s on %s) is gone",
                folder,
                (old or {}).get("pid"),
                (old or {}).get("host"),
            )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(mine, handle)
        break
    else:
        raise UserError(f"{name}={folder}: cannot take its lock ({path})")
    try:
        yield
    finally:
        if _holder(folder) == mine:
            path.unlink(missing_ok=True)
