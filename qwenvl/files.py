"""Files the pipeline writes: outputs written atomically and never replaced without leave, and
the settings stored as JSON beside datasets and checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar, Self

import numpy as np

from qwenvl.cli import UserError


def check_apart(output: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """UserError when the output is, contains, or lies inside one of the inputs (symlinks
    resolved), with or without --overwrite-output: replacing it would delete the input.
    `inputs` maps each input's option (for the message) to its path; None, or a path that does
    not exist (a hub id, say), is no input on disk."""
    out = Path(output).expanduser().resolve()
    for option, path in inputs.items():
        if path is None or not Path(path).expanduser().exists():
            continue
        source = Path(path).expanduser().resolve()
        if out == source:
            relation = "is"
        elif out.is_relative_to(source):
            relation = "lies inside"
        elif source.is_relative_to(out):
            relation = "contains"
        else:
            continue
        raise UserError(
            f"{output}: the output {relation} the input {option} {path}; choose an output "
            "folder apart from every input"
        )


def file_folders(paths, base: str | Path = ".") -> set[str]:
    """The absolute folders (normalised, not resolved) of many file paths, relative ones taken
    from `base`: a million segment paths cost their few thousand folders' joins."""
    base = os.path.abspath(base)
    folders = {os.path.dirname(p) for p in paths if isinstance(p, str)}
    return {os.path.normpath(os.path.join(base, folder)) for folder in folders}


def check_apart_from_files(output: str | Path, what: str, folders: set[str]) -> None:
    """UserError when the output is, contains, or lies inside a folder holding input files
    (`what` names them for the message: "the videos of --test-json", say); `folders` as
    file_folders gives them."""
    folders = {folder for folder in folders if os.path.isdir(folder)}  # what exists can be lost
    out = os.path.normpath(os.path.abspath(Path(output).expanduser()))
    candidates = {out, os.path.realpath(out)}
    for candidate in candidates:
        ancestors = [candidate]
        while os.path.dirname(ancestors[-1]) != ancestors[-1]:
            ancestors.append(os.path.dirname(ancestors[-1]))
        hit = next((a for a in ancestors if a in folders), None)
        relation = "is" if hit == candidate else "lies inside"
        if hit is None:
            prefix = candidate.rstrip(os.sep) + os.sep
            hit = next((f for f in folders if f.startswith(prefix)), None)
            relation = "contains"
        if hit is not None:
            raise UserError(
                f"{output}: the output {relation} the folder {hit} of {what}; choose an output "
                "folder apart from every input"
            )


def missing_files(paths: list[str], listings: dict[str, set]) -> np.ndarray:
    """Which of `paths` are not in their folder, each folder listed once (`listings` caches
    the listings across calls): a million segment files cost their folders' listings, not a
    million calls to stat."""
    missing = np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        folder, name = os.path.split(path)
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        missing[i] = name not in listings[folder]
    return missing


OUTPUT_MARK = ".qwenvl-output"  # in every output folder a script writes whole


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """The output path, or UserError when it holds something and overwrite is off, is a file,
    or holds what no script of this project wrote (--overwrite-output replaces only an output
    folder of ours, never a user's own files)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file, not an output folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UserError(
                f"{path}: output already exists and is not empty (pass --overwrite-output to "
                "replace it)"
            )
        if not (path / OUTPUT_MARK).is_file():
            raise UserError(
                f"{path}: holds files this project did not write; --overwrite-output replaces "
                "only an output folder of ours: empty it or choose another"
            )
    return path


def writable_parent(path: str | Path) -> None:
    """UserError when the folder an output would be made in cannot be written."""
    parent = Path(path).expanduser().absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot be written ({parent} is read-only for this user)")


def mark_output(folder: Path, script: str) -> None:
    """Mark a folder as an output of this project (check_output_dir lets it be replaced)."""
    (folder / OUTPUT_MARK).write_text(json.dumps({"written_by": script}) + "\n")


@contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `path` only when the block succeeds.

    An interrupted run leaves no directory under the final name, so nothing half-written ever
    looks complete.
    """
    final = check_output_dir(path, overwrite)
    writable_parent(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        mark_output(tmp, Path(sys.argv[0]).name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, final)


def remove_stale(final: Path) -> None:
    """Remove what a killed run left beside `final`: temporaries .NAME.tmp-PID whose process
    is gone (a live one is another run's, and stays)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_path(new: Path, final: Path) -> None:
    """Move `new` onto `final`, removing what was there first."""
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    new.rename(final)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file through a temporary name so readers never see it half-written."""
    path = Path(path)
    remove_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


class StoredSettings:
    """A frozen dataclass kept as one JSON file (its FILE) beside a dataset or a checkpoint."""

    FILE: ClassVar[str]

    def save(self, directory: str | Path) -> None:
        text = json.dumps(asdict(self), indent=2) + "\n"
        atomic_write_text(Path(directory) / self.FILE, text)

    @classmethod
    def load(cls, directory: str | Path) -> Self | None:
        """The settings stored in `directory`, or None when there are none; ValueError names a
        file that does not hold valid settings."""
        path = Path(directory) / cls.FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: not valid {cls.__name__} ({err})") from None


def first_stored(settings: type[StoredSettings], *directories: str | Path | None):
    """The settings stored in the first of `directories` that holds them (a checkpoint, then
    its base model, then a dataset), or None."""
    for directory in directories:
        if directory is not None and Path(directory).is_dir():
            found = settings.load(directory)
            if found is not None:
                return found
    return None
