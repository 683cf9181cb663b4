#!/usr/bin/env python
"""Fine-tune Qwen3-VL on 1-second driving clips (what the two launchers run under torchrun).

LoRA or full fine-tuning, DeepSpeed optional, auto-resume from the newest complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoProcessor, HfArgumentParser, TrainerCallback, set_seed

from qwenvl import distributed
from qwenvl.chat import PromptSettings
from qwenvl.checkpoint import InferenceFiles, Tuning
from qwenvl.cli import UserError, run_script
from qwenvl.data import dataset_specs
from qwenvl.data.collator import VideoCollator
from qwenvl.data.dataset import BadTrainingData, SupervisedDataset
from qwenvl.data.samples import (
    answer_format_of,
    dataset_fingerprints,
    load_samples,
    prompt_of,
    prompt_of_samples,
)
from qwenvl.files import atomic_write_text
from qwenvl.inference.spec import ModelSpec
from qwenvl.model import load_model, quantization_config
from qwenvl.train import config, preflight
from qwenvl.train.compute import ComputeReport
from qwenvl.train.config import LoraSettings, SettingError, TuneFlags
from qwenvl.train.lock import locked
from qwenvl.train.resume import (
    ConvertFirst,
    TrainingRecord,
    check_zero_world,
    find_resume_checkpoint,
)
from qwenvl.train.setup import setup_training, trainable_summary
from qwenvl.train.task_metrics import GenerationMetrics
from qwenvl.train.trainer import QwenVLTrainer
from qwenvl.video import VideoSettings

logger = logging.getLogger("train")
SKIPPED_FILE = "skipped_samples.json"


def setting(name: str, **extra):
    """A dataclass field of train.py from its setting in qwenvl.train.config (default, help)."""
    spec = config.BY_NAME[name]
    default = spec.default if spec.default is not None or spec.optional else None
    shown = spec.help.replace("%", "%%")  # argparse formats help with %
    return field(default=default, metadata={"help": f"{shown} ({name})", **extra})


@dataclass
class ModelArguments:
    model_name_or_path: str = setting("MODEL_PATH")
    tune_mm_vision: bool = setting("TUNE_MM_VISION")
    tune_mm_mlp: bool = setting("TUNE_MM_MLP")
    tune_mm_llm: bool = setting("TUNE_MM_LLM")
    lora_enable: bool = field(
        default=False,
        metadata={"help": "train LoRA adapters (the lora preset); False: full fine-tuning"},
    )
    lora_r: int = setting("LORA_R")
    lora_alpha: int = setting("LORA_ALPHA")
    lora_dropout: float = setting("LORA_DROPOUT")
    mm_projector_lr: float | None = setting("MM_PROJECTOR_LR")
    vision_tower_lr: float | None = setting("VISION_TOWER_LR")
    quantization: str | None = setting("QUANT")
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "attention kernel (default: flash_attention_2 for bf16/fp16 weights on a "
            "GPU that runs it, else sdpa)"
        },
    )


@dataclass
class DataArguments:
    dataset_use: str = setting("DATASETS")
    eval_dataset_use: str = setting("EVAL_DATASETS")
    video_fps: float = setting("VIDEO_FPS")
    video_min_frames: int = setting("VIDEO_MIN_FRAMES")
    video_max_frames: int = setting("VIDEO_MAX_FRAMES")
    video_min_pixels: int = setting("VIDEO_MIN_PIXELS")
    video_max_pixels: int = setting("VIDEO_MAX_PIXELS")
    video_side_min_frames: int = setting("VIDEO_SIDE_MIN_FRAMES")
    video_side_max_frames: int = setting("VIDEO_SIDE_MAX_FRAMES")
    video_side_min_pixels: int = setting("VIDEO_SIDE_MIN_PIXELS")
    video_side_max_pixels: int = setting("VIDEO_SIDE_MAX_PIXELS")

    def video_settings(self) -> VideoSettings:
        return VideoSettings(
            **{f.name: getattr(self, f"video_{f.name}") for f in dataclasses.fields(VideoSettings)}
        )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = setting("MODEL_MAX_LENGTH")
    auto_resume: bool = setting("RESUME")
    eval_generate_samples: int = setting("EVAL_GENERATE_SAMPLES")
    max_bad_samples: float = setting("MAX_BAD_SAMPLES")
    peak_tflops: float | None = setting("PEAK_TFLOPS")
    # The Trainer's own arguments whose defaults are the settings' (the preset's, by kind).
    lr_scheduler_type: str = setting("LR_SCHEDULER")
    warmup_steps: float = setting("WARMUP_RATIO")
    weight_decay: float = setting("WEIGHT_DECAY")
    logging_steps: float = setting("LOGGING_STEPS")
    save_steps: float = setting("SAVE_STEPS")
    dataloader_num_workers: int = setting("DATALOADER_WORKERS")
    report_to: str = setting("REPORT_TO")
    ddp_find_unused_parameters: bool = field(
        default=False, metadata={"help": "every parameter of the model gets a gradient"}
    )
    activation_checkpointing: bool = field(
        default=True, metadata={"help": "recompute activations to save memory"}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "keep video fields in batches (must stay False)"}
    )
    label_only_logits: bool = field(
        default=True,
        metadata={
            "help": "compute the LM head and the loss on labelled positions only (the answer), "
            "not on the ~90%% of video tokens; False: the model's own full-logits loss"
        },
    )
    include_num_input_tokens_seen: str = field(
        default="no",
        metadata={
            "help": "the Trainer's own token count (a host sync per step); compute.json counts "
            "tokens without one"
        },
    )


class SaveInferenceFiles(TrainerCallback):
    """Store what a checkpoint needs beside its weights (qwenvl.checkpoint) in every one."""

    def __init__(self, files: InferenceFiles) -> None:
        self.files = files

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.files.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")


class LogOptimizerGroups(TrainerCallback):
    """Say which learning rate each parameter group really got, after DeepSpeed wrapped it."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None and state.is_world_process_zero:
            groups = ", ".join(
                f"{g.get('group_name', i)}={g.get('initial_lr', g['lr']):g}"
                for i, g in enumerate(optimizer.param_groups)
            )
            logger.info("optimizer %s groups: %s", type(optimizer).__name__, groups)


def run_kind(argv: list[str]) -> str:
    """lora or full: the preset a command line trains with (--lora_enable)."""
    for i, arg in enumerate(argv):
        value = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
        if arg.split("=")[0] == "--lora_enable":
            return "lora" if value.lower() in config.TRUE_WORDS else "full"
    return "full"


def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataArguments, TrainingArguments) of the command line, its defaults the
    settings' and its kind's preset (qwenvl.train.config), each value checked as the launchers
    check it."""
    argv = sys.argv[1:] if argv is None else argv
    if torch.cuda.is_available():
        if not any(a.startswith(("--bf16", "--fp16")) for a in argv):
            argv = [*argv, "--bf16", "True"]
    elif not any(a.startswith("--use_cpu") for a in argv):
        # Without a GPU, several processes (torchrun, DeepSpeed) only form one job on gloo
        # when the Trainer is told it runs on CPU.
        argv = [*argv, "--use_cpu", "True"]
    kind = run_kind(argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    parser.set_defaults(**config.flag_defaults(kind))
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
        values = settings_of_arguments(model_args, data_args, training_args, kind)
        for name, value in values.items():
            config.check(config.BY_NAME[name], value)
        config.check_together({**values, "NNODES": 1, "NODE_RANK": 0})
    except ValueError as err:
        raise UserError(str(err)) from None
    if universal_resume(training_args):
        # This resume loads DeepSpeed's universal form of its checkpoint (written by another
        # number of processes): the same config, told so.
        config_path = training_args.deepspeed
        ds_config = json.loads(Path(config_path).read_text())
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
        argv = [*argv, "--deepspeed", json.dumps(ds_config)]
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
        training_args.deepspeed_file = config_path  # the setting as given, for the checks
        logger.info("resuming a universal checkpoint (%s with load_universal)", config_path)
    if training_args.activation_checkpointing_kwargs is None:
        training_args.activation_checkpointing_kwargs = {"use_reentrant": False}
        training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}
    if data_args.eval_dataset_use and training_args.eval_strategy == "no":
        training_args.eval_strategy = "steps"  # an evaluation at each checkpoint
        training_args.eval_steps = training_args.save_steps
    # Evaluation keeps no logits: the loss is all it reports (task metrics generate apart),
    # and logits of answers of different lengths could not be gathered across ranks.
    training_args.prediction_loss_only = True
    return model_args, data_args, training_args


def universal_resume(training_args) -> bool:
    """Whether this run resumes a ZeRO-3 checkpoint written by another number of processes
    (through the universal form DeepSpeed's ds_to_universal made of it)."""
    if not (training_args.deepspeed and training_args.auto_resume):
        return False
    if not isinstance(training_args.deepspeed, str) or not Path(training_args.deepspeed).is_file():
        return False
    checkpoint = find_resume_checkpoint(training_args.output_dir)
    if checkpoint is None:
        return False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        return check_zero_world(checkpoint, world)
    except ConvertFirst as err:
        raise UserError(str(err)) from None


def settings_of_arguments(model_args, data_args, training_args, kind: str) -> dict:
    """The settings' values (by launcher variable) of parsed arguments."""
    arguments = {**vars(model_args), **vars(data_args), **vars(training_args)}
    values = config.values_of_arguments(arguments, kind)
    values["PRECISION"] = "bf16" if training_args.bf16 else "fp32"
    values["DEEPSPEED_CONFIG"] = (
        getattr(training_args, "deepspeed_file", None) or training_args.deepspeed or None
    )
    values["REPORT_TO"] = ",".join(training_args.report_to or []) or "none"
    return values


def kind_of(model_args: ModelArguments) -> str:
    return "lora" if model_args.lora_enable else "full"


def tune_flags(model_args: ModelArguments) -> TuneFlags:
    return TuneFlags(model_args.tune_mm_vision, model_args.tune_mm_mlp, model_args.tune_mm_llm)


def lora_settings(model_args: ModelArguments) -> LoraSettings | None:
    if not model_args.lora_enable:
        return None
    return LoraSettings(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout)


def tuning_of(model_args: ModelArguments) -> Tuning:
    """What checkpoints record of which parts trained and how (tuning.json)."""
    lora = lora_settings(model_args)
    shape = (lora.r, lora.alpha, lora.dropout) if lora else (None, None, None)
    flags = tune_flags(model_args)
    return Tuning(flags.vision, flags.mlp, flags.llm, *shape, model_args.quantization or None)


def build_model(model_args: ModelArguments, training_args: TrainingArguments):
    flags = tune_flags(model_args)
    quantization = quantization_config(model_args.quantization)
    if quantization is not None and (not model_args.lora_enable or training_args.deepspeed):
        raise ValueError("QUANT=4bit is for LoRA without DeepSpeed (QLoRA)")
    # bf16 weights whenever the run computes in bf16: on a GPU, and on a CPU asked for the
    # GPU's regime (PRECISION=bf16); the trained ones get fp32 masters below.
    dtype = torch.bfloat16 if training_args.bf16 else torch.float32
    model = load_model(
        model_args.model_name_or_path,
        model_args.attn_implementation,
        dtype=dtype,
        quantization=quantization,
    )
    lora = lora_settings(model_args)
    model = setup_training(model, flags, lora, deepspeed=bool(training_args.deepspeed))
    logger.info(trainable_summary(model))
    return model


def build_datasets(data_args: DataArguments, training_args: TrainingArguments, processor):
    """The training and validation datasets; their bad samples named and left out (UserError
    when none is left or more than --max_bad_samples are bad)."""
    settings = data_args.video_settings()
    datasets = []
    for use, seed in (
        (data_args.dataset_use, training_args.data_seed or training_args.seed),
        (data_args.eval_dataset_use, 42),
    ):
        if not use:
            datasets.append(None)
            continue
        samples = load_samples(dataset_specs(use), seed)
        try:
            dataset = SupervisedDataset(
                samples,
                processor,
                settings,
                training_args.model_max_length,
                training_args.max_bad_samples,
            )
            dataset.check_not_empty()
            datasets.append(dataset)
        except BadTrainingData as err:
            raise UserError(f"{use}: {err}") from None
    return datasets[0], datasets[1], settings


def report_skipped(trainer: QwenVLTrainer, train_set: SupervisedDataset, output_dir: str) -> None:
    """skipped_samples.json in output_dir: every sample left out at start-up or skipped while
    training (on any rank), with why; one line when there are any."""
    skipped = dict(trainer.skipped_samples)
    if torch.distributed.is_initialized():
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, skipped)
        skipped = {key: why for part in gathered for key, why in part.items()}
    if not trainer.is_world_process_zero():
        return
    report = {
        "left_out_at_start": train_set.excluded,
        "longer_than_model_max_length": train_set.skipped,
        "skipped_while_training": skipped,
    }
    atomic_write_text(Path(output_dir) / SKIPPED_FILE, json.dumps(report, indent=2) + "\n")
    if train_set.excluded or skipped:
        logger.warning(
            "%d samples left out at start-up and %d skipped while training: %s",
            len(train_set.excluded),
            len(skipped),
            Path(output_dir) / SKIPPED_FILE,
        )


def generation_metrics(data_args, training_args, processor, settings, answer_format, prompt):
    """Task metrics at each evaluation when --eval_generate_samples > 0, else None."""
    if training_args.eval_generate_samples <= 0:
        return None
    samples = load_samples(dataset_specs(data_args.eval_dataset_use))
    spec = ModelSpec(
        training_args.output_dir,
        None,
        settings,
        answer_format,
        prompt or PromptSettings(),
        None,
        training_args.output_dir,
    )
    return GenerationMetrics(
        samples[: training_args.eval_generate_samples],
        processor,
        spec,
        training_args.per_device_eval_batch_size,
    )


def check_run(model_args, data_args, training_args) -> dict:
    """What the launchers' pre-flight checks, for train.py run without them too: the paths, the
    output apart from every input, and a resume that trains what its checkpoint trained (the
    global batch kept through the accumulation where the number of processes changed). The
    settings' values."""
    kind = kind_of(model_args)
    values = settings_of_arguments(model_args, data_args, training_args, kind)
    values.update(NNODES=1, NODE_RANK=0, NPROC_PER_NODE=training_args.world_size)
    try:
        preflight.check_paths(values)
        changes = preflight.check_resume(values, kind) if training_args.auto_resume else {}
    except SettingError as err:
        raise UserError(str(err)) from None
    if "GRAD_ACCUM" in changes:
        training_args.gradient_accumulation_steps = values["GRAD_ACCUM"] = changes["GRAD_ACCUM"]
    return values


def run(parsed: tuple[ModelArguments, DataArguments, TrainingArguments]) -> int:
    model_args, data_args, training_args = parsed
    logging.basicConfig(
        level=logging.INFO if training_args.local_rank in (-1, 0) else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    values = check_run(model_args, data_args, training_args)
    lock = locked(training_args.output_dir) if training_args.process_index == 0 else nullcontext()
    with lock:
        return train(model_args, data_args, training_args, values)


def train(model_args, data_args, training_args, values: dict) -> int:
    """Train, save and report, holding OUTPUT_DIR's lock (rank 0)."""
    set_seed(training_args.seed)
    if training_args.deepspeed and torch.distributed.is_initialized():
        # ZeRO-3 partitions weights while they load; DeepSpeed must see the whole job first.
        import deepspeed

        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    try:
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
        train_set, eval_set, settings = build_datasets(data_args, training_args, processor)
        specs = dataset_specs(data_args.dataset_use)
        answer_format, prompt = answer_format_of(specs), prompt_of(specs)
        if prompt is None:  # files that record no prompt: their samples' own, if they share it
            prompt = prompt_of_samples(train_set.samples)
            if prompt is None:
                logger.warning(
                    "%s records no prompt and its samples' prompts differ: the checkpoints "
                    "store none, so predict.py cannot ask them (evaluate.py asks each test "
                    "sample with its own)",
                    data_args.dataset_use,
                )
        model = build_model(model_args, training_args)
    except (ValueError, OSError) as err:
        raise UserError(str(err).splitlines()[0]) from None
    record = TrainingRecord.of_run(
        values,
        kind_of(model_args),
        training_args.world_size,
        dataset_fingerprints(dataset_specs(data_args.dataset_use)),
    )
    inference_files = InferenceFiles(
        processor, settings, answer_format, prompt, tuning_of(model_args), record
    )
    compute = ComputeReport(training_args.peak_tflops)
    pixel_dtype = torch.bfloat16 if training_args.bf16 else None
    logger.info("video pixels cross the DataLoader in %s", pixel_dtype or torch.float32)
    logger.info(
        "video settings: %s; %s; %d training samples", settings, answer_format, len(train_set)
    )
    trainer = QwenVLTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=VideoCollator(processor.tokenizer.pad_token_id, pixel_dtype=pixel_dtype),
        callbacks=[
            SaveInferenceFiles(inference_files),
            LogOptimizerGroups(),
            compute,
        ],
        projector_lr=model_args.mm_projector_lr,
        vision_lr=model_args.vision_tower_lr,
        label_only_logits=training_args.label_only_logits,
        generation_metrics=generation_metrics(
            data_args, training_args, processor, settings, answer_format, prompt
        ),
        token_count=compute.tokens,
    )
    compute.eval_seconds = lambda: trainer.eval_seconds
    checkpoint = (
        find_resume_checkpoint(training_args.output_dir) if training_args.auto_resume else None
    )
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    report_skipped(trainer, train_set, training_args.output_dir)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        inference_files.save(training_args.output_dir)
        logger.info("saved to %s", training_args.output_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    return distributed.leave(run_script(parse_args, run, argv), hard_exit=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    distributed.die_with_parent()
    sys.exit(main())
