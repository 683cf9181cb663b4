"""torchrun as the launchers run it: torch.distributed.run itself, except that a job a worker
ended on a user error (exit status 2, its one line printed) ends there with status 2, instead
of torchrun's traceback of the child failure after the line that says what to fix.

    python -m qwenvl.train.torchrun --nproc_per_node 2 ... scripts/train.py ...
"""

from __future__ import annotations

import logging
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

USER_ERROR = 2


class _QuietOnUserError(logging.Filter):
    """Drops the agent's "failed (exitcode: 2)" line, and its notice that it stops the other
    ranks (which follows any failure): the worker's own line says it all, and stays last."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Sending process"):
            return False
        return not (str(record.msg).startswith("failed (exitcode") and record.args[0] == USER_ERROR)


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(
        _QuietOnUserError()
    )
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as err:
        # The first rank to fail decides; the agent then stops the others (SIGTERM).
        first = min(err.failures.values(), key=lambda failure: failure.timestamp)
        if first.exitcode == USER_ERROR:
            return USER_ERROR
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
