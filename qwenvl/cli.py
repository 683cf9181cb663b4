"""Shared command-line plumbing: one-line errors and atomic output directories."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


def main_guard(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a script's main so UserError and Ctrl-C end with one line and a non-zero status."""

    @wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return run


def cli_main(
    parse_args: Callable[[list[str] | None], object],
    run: Callable[[object], int | None],
    argv: list[str] | None = None,
) -> int:
    """A script's main: parse its arguments, run it, and report user errors in one line."""
    return main_guard(lambda: run(parse_args(argv)))()


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """The output path, or UserError when it already holds something and overwrite is off."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise UserError(f"{path}: output already exists (pass --overwrite-output to replace it)")
    return path


@contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `path` only when the block succeeds.

    An interrupted run leaves no directory under the final name, so nothing half-written ever
    looks complete.
    """
    final = check_output_dir(path, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    tmp.rename(final)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file through a temporary name so readers never see it half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def add_inference_arguments(parser) -> None:
    """Options every script that runs a model for answers shares."""
    parser.add_argument(
        "--base-model",
        help="base model of a LoRA adapter (default: the one recorded in the adapter)",
    )
    parser.add_argument(
        "--device",
        help="where the model runs: cpu, cuda or cuda:N (default: cuda when there is a GPU)",
    )


def add_generation_arguments(parser, free_help: str) -> None:
    """Options of the scripts that generate answers: budget and decoding."""
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="generation budget (default: fitted to the widest answer of the model's format)",
    )
    parser.add_argument(
        "--no-constrained", dest="constrained", action="store_false", help=free_help
    )


def load_inference_model(args, model_path: str, data_dir: str | Path | None = None):
    """load_for_inference for a script: a bad device or a model that cannot load is one line."""
    from qwenvl.inference import load_for_inference
    from qwenvl.train.model import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as err:
        raise UserError(f"--device: {err}") from None
    try:
        return load_for_inference(model_path, args.base_model, args.device, data_dir)
    except (OSError, ValueError) as err:
        raise UserError(f"{model_path}: cannot load ({str(err).splitlines()[0]})") from None
