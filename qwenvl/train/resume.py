"""Resuming after a crash: the newest checkpoint whose every file reads back complete (one left
half-written by the crash is reported and skipped), and whether a relaunch trains what that
checkpoint trained: its settings, its data by content and its global batch."""

from __future__ import annotations

import json
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from qwenvl.checkpoint import Tuning
from qwenvl.data import dataset_specs
from qwenvl.files import StoredSettings
from qwenvl.train import config

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def safetensors_complete(path: Path) -> bool:
    """True when the file is as long as its header says: a crash mid-write leaves it short."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return False
        header_len = int.from_bytes(head, "little")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            return False
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return path.stat().st_size == 8 + header_len + max(ends, default=0)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory is not complete, or None when every file in it reads back."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text())
    except ValueError:
        return "trainer_state.json is truncated"
    for file in sorted(path.rglob("*")):
        if file.suffix == ".safetensors" and not safetensors_complete(file):
            return f"{file.relative_to(path)} is truncated"
        elif file.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(file):
            return f"{file.relative_to(path)} is truncated"
    return None


def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint-* in output_dir; incomplete ones are reported and skipped."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir():
            found.append((int(match[1]), child))
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping incomplete checkpoint %s: %s", path, problem)
    return None


@dataclass(frozen=True)
class TrainingRecord(StoredSettings):
    """What a run trained, stored as training.json in each of its checkpoints: every setting a
    resume must keep (qwenvl.train.config marks them), the number of processes, and the
    training files with the hash of their content. A relaunch into the folder is compared with
    it before torchrun starts (resume_changes)."""

    FILE: ClassVar[str] = "training.json"
    kind: str
    settings: dict
    world_size: int
    datasets: list

    @classmethod
    def of_run(cls, values: dict, kind: str, world_size: int, datasets: list) -> TrainingRecord:
        kept = {s.name: values.get(s.name) for s in config.settings_of(kind) if s.resume}
        return cls(kind, {k: _stored(v) for k, v in kept.items()}, world_size, datasets)

    def global_batch(self) -> int:
        return self.settings["BATCH_SIZE"] * self.settings["GRAD_ACCUM"] * self.world_size


def _stored(value):
    """A setting's value as the record keeps it: local paths made absolute, so a relaunch from
    another folder compares the same files."""
    if value == "":
        return None
    if isinstance(value, str) and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


KIND_WORDS = {"lora": "LoRA fine-tuning", "full": "full fine-tuning"}
# Settings compared apart: the data by content, the batch by its global size.
_APART = ("DATASETS", "BATCH_SIZE", "GRAD_ACCUM")


def resume_changes(checkpoint: Path, values: dict, kind: str) -> dict[str, object]:
    """The settings to change so a relaunch trains what `checkpoint` trained (GRAD_ACCUM, where
    the number of processes changed); ValueError naming every difference that cannot be kept."""
    record = TrainingRecord.load(checkpoint)
    if record is None:
        _compare_tuning(checkpoint, values, kind)
        return {}
    if record.kind != kind:
        raise ValueError(
            f"its {checkpoint.name} was trained as {KIND_WORDS[record.kind]} (now "
            f"{KIND_WORDS[kind]})"
        )
    differing = []
    for name, before in record.settings.items():
        before, now = _stored(before), _stored(values.get(name))
        if name not in _APART and before != now:
            differing.append(
                f"{name}={config.shown(before) or 'none'} (now {config.shown(now) or 'none'})"
            )
    differing += _data_changes(record, values)
    differing += _prompt_changes(checkpoint, values)
    if values.get("DEEPSPEED_CONFIG"):
        check_zero_world(checkpoint, values["NNODES"] * values["NPROC_PER_NODE"])
    changes, batch_problem = _keep_global_batch(record, values)
    if batch_problem:
        differing.append(batch_problem)
    if differing:
        raise ValueError(f"its {checkpoint.name} was trained with {', '.join(differing)}")
    return changes


def _data_changes(record: TrainingRecord, values: dict) -> list[str]:
    from qwenvl.data.samples import dataset_fingerprints

    now = dataset_fingerprints(dataset_specs(values["DATASETS"]))
    before = [(d["file"], d["dataset"].partition("%")[2], d["xxh3"]) for d in record.datasets]
    after = [(d["file"], d["dataset"].partition("%")[2], d["xxh3"]) for d in now]
    if [b[:2] for b in before] != [a[:2] for a in after]:
        shown = ", ".join(d["dataset"] for d in record.datasets)
        return [f"DATASETS={shown} (now {values['DATASETS']})"]
    return [
        f"DATASETS: {file} (its content changed since)"
        for (file, _, old), (_, _, new) in zip(before, after, strict=True)
        if old != new
    ]


def _prompt_changes(checkpoint: Path, values: dict) -> list[str]:
    """The prompt and answer format the data holds now against the checkpoint's."""
    from qwenvl.answer import AnswerFormat
    from qwenvl.chat import PromptSettings, prompt_mismatch
    from qwenvl.data.samples import answer_format_of, prompt_of

    specs = dataset_specs(values["DATASETS"])
    changed = []
    mismatch = prompt_mismatch(PromptSettings.load(checkpoint), prompt_of(specs))
    if mismatch:
        changed.append(f"the prompt of its data ({mismatch})")
    trained, now = AnswerFormat.load(checkpoint), answer_format_of(specs)
    if trained is not None and trained != now:
        changed.append(f"the answer format {trained} (now {now})")
    return changed


def _keep_global_batch(record: TrainingRecord, values: dict) -> tuple[dict, str | None]:
    """({"GRAD_ACCUM": n} when another number of processes keeps the global batch that way, or
    nothing), or the change that cannot be kept, in words."""
    world = values["NNODES"] * values["NPROC_PER_NODE"]
    batch, accum = values["BATCH_SIZE"], values["GRAD_ACCUM"]
    wanted = record.global_batch()
    if batch * accum * world == wanted:
        return {}, None
    was = (
        f"a global batch of {wanted} (BATCH_SIZE {record.settings['BATCH_SIZE']} x GRAD_ACCUM "
        f"{record.settings['GRAD_ACCUM']} x {record.world_size} processes)"
    )
    if world != record.world_size and wanted % (batch * world) == 0:
        new_accum = wanted // (batch * world)
        print(
            f"note: resuming on {world} processes (was {record.world_size}): GRAD_ACCUM "
            f"{accum} -> {new_accum} keeps {was}"
        )
        return {"GRAD_ACCUM": new_accum}, None
    return {}, (
        f"{was}, not {batch * accum * world} (BATCH_SIZE {batch} x GRAD_ACCUM {accum} x {world} "
        "processes)"
    )


def _compare_tuning(checkpoint: Path, values: dict, kind: str) -> None:
    """A checkpoint of an earlier version records only its tuning.json: compare that."""
    trained = Tuning.load(checkpoint)
    if trained is None:
        return
    if (trained.lora_r is None) != (kind != "lora"):
        was = "full fine-tuning" if trained.lora_r is None else "LoRA fine-tuning"
        raise ValueError(f"its {checkpoint.name} was trained as {was} (now {KIND_WORDS[kind]})")
    names = {
        "tune_vision": "TUNE_MM_VISION",
        "tune_mlp": "TUNE_MM_MLP",
        "tune_llm": "TUNE_MM_LLM",
        "lora_r": "LORA_R",
        "lora_alpha": "LORA_ALPHA",
        "lora_dropout": "LORA_DROPOUT",
        "quantization": "QUANT",
    }
    differing = []
    for field, name in names.items():
        before, now = getattr(trained, field), values.get(name)
        if field == "quantization":
            before, now = before or None, now or None
        if name in values and before != now:
            differing.append(
                f"{name}={config.shown(before) or 'none'} (now {config.shown(now) or 'none'})"
            )
    if differing:
        raise ValueError(f"its {checkpoint.name} was trained with {', '.join(differing)}")


_ZERO3_MODEL = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_\d+_model_states\.pt$")
UNIVERSAL_TAG = "latest_universal"


def zero_processes(checkpoint: Path) -> int | None:
    """The number of processes that wrote a DeepSpeed ZeRO-3 checkpoint (its model-state
    shards under the tag `latest` names), from file names alone; None for another kind."""
    latest = checkpoint / "latest"
    if not latest.is_file():
        return None
    folder = checkpoint / latest.read_text().strip()
    if not folder.is_dir():
        return None
    ranks = {m[1] for p in folder.iterdir() if (m := _ZERO3_MODEL.match(p.name))}
    return len(ranks) or None


def is_universal(checkpoint: Path) -> bool:
    """Whether DeepSpeed's ds_to_universal converted the checkpoint (any world size loads it)."""
    return (checkpoint / UNIVERSAL_TAG).is_file()


def conversion_command(checkpoint: Path) -> str:
    """DeepSpeed's own command that makes a ZeRO checkpoint loadable on any number of ranks."""
    tag = (checkpoint / "latest").read_text().strip()
    source = checkpoint / tag
    return (
        f"python -m deepspeed.checkpoint.ds_to_universal --input_folder {source} "
        f"--output_folder {source}_universal"
    )


class ConvertFirst(ValueError):
    """A ZeRO checkpoint resumed on another number of processes before its conversion; str() is
    the one line with DeepSpeed's command."""


def check_zero_world(checkpoint: Path, world: int) -> bool:
    """Whether resuming a DeepSpeed ZeRO-3 checkpoint on `world` processes goes through its
    universal form (it was written by another number); ConvertFirst when it has none yet."""
    written_by = zero_processes(checkpoint)
    if written_by is None or written_by == world:
        return False
    if not is_universal(checkpoint):
        command = conversion_command(checkpoint)
        raise ConvertFirst(
            f"{checkpoint} was written by {written_by} ZeRO-3 processes and this run has "
            f"{world}: convert it once with DeepSpeed's own tool, `{command}`, then relaunch "
            "(the resume loads it as a universal checkpoint by itself)"
        )
    return True
