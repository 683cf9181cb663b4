#!/usr/bin/env python
"""Fine-tune Qwen3-VL on 1-second driving clips (what the two launchers run under torchrun).

LoRA or full fine-tuning, DeepSpeed optional, auto-resume from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoProcessor, HfArgumentParser, TrainerCallback, set_seed

from qwenvl import distributed
from qwenvl.checkpoint import InferenceFiles
from qwenvl.cli import UserError, run_script
from qwenvl.data import data_list, dataset_specs
from qwenvl.data.collator import VideoCollator
from qwenvl.data.dataset import BadTrainingData, SupervisedDataset
from qwenvl.data.samples import answer_format_of, load_samples, prompt_of
from qwenvl.files import atomic_write_text, check_apart
from qwenvl.model import load_model, quantization_config
from qwenvl.train.compute import ComputeReport
from qwenvl.train.resume import find_resume_checkpoint
from qwenvl.train.settings import LoraSettings, TuneFlags, Tuning
from qwenvl.train.setup import setup_training, trainable_summary
from qwenvl.train.task_metrics import GenerationMetrics
from qwenvl.train.trainer import QwenVLTrainer
from qwenvl.video import VideoSettings

logger = logging.getLogger("train")
SKIPPED_FILE = "skipped_samples.json"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="Qwen/Qwen3-VL-4B-Instruct",
        metadata={"help": "hub id or local directory of the base model"},
    )
    tune_mm_vision: bool = field(default=False, metadata={"help": "train the vision encoder"})
    tune_mm_mlp: bool = field(
        default=True, metadata={"help": "train the vision-language projector (mergers)"}
    )
    tune_mm_llm: bool = field(default=True, metadata={"help": "train the language model"})
    lora_enable: bool = field(
        default=False, metadata={"help": "train LoRA adapters instead of full weights"}
    )
    lora_r: int = field(default=LoraSettings.r, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(
        default=LoraSettings.alpha, metadata={"help": "LoRA alpha (scale = alpha / r)"}
    )
    lora_dropout: float = field(default=LoraSettings.dropout, metadata={"help": "LoRA dropout"})
    mm_projector_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the projector (default: --learning_rate)"}
    )
    vision_tower_lr: float | None = field(
        default=None,
        metadata={"help": "learning rate of the vision encoder (default: --learning_rate)"},
    )
    quantization: str | None = field(
        default=None,
        metadata={"help": "4bit: QLoRA, the language model in bitsandbytes NF4 (LoRA, CUDA only)"},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "attention kernel (default: flash_attention_2 on CUDA if installed, else sdpa)"
        },
    )


@dataclass
class DataArguments:
    dataset_use: str = field(
        default="physical_ai_driving",
        metadata={
            "help": "comma-separated registry names or training JSON paths, each maybe name%%pct"
        },
    )
    eval_dataset_use: str = field(
        default="", metadata={"help": "validation datasets, same syntax; empty = no evaluation"}
    )
    video_fps: float = field(
        default=VideoSettings.fps, metadata={"help": "frames per second sampled from each clip"}
    )
    video_min_frames: int = field(
        default=VideoSettings.min_frames, metadata={"help": "fewest frames per clip"}
    )
    video_max_frames: int = field(
        default=VideoSettings.max_frames, metadata={"help": "most frames per clip"}
    )
    video_min_pixels: int = field(
        default=VideoSettings.min_pixels, metadata={"help": "lower bound of pixels per frame"}
    )
    video_max_pixels: int = field(
        default=VideoSettings.max_pixels, metadata={"help": "upper bound of pixels per frame"}
    )

    def video_settings(self) -> VideoSettings:
        return VideoSettings(
            self.video_fps,
            self.video_min_frames,
            self.video_max_frames,
            self.video_min_pixels,
            self.video_max_pixels,
        )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(
        default=8192,
        metadata={"help": "longest sample in tokens; longer samples are skipped, never cut"},
    )
    auto_resume: bool = field(
        default=True,
        metadata={"help": "continue from the newest complete checkpoint-* in output_dir"},
    )
    gradient_checkpointing: bool = field(
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
        default="non_padding",
        metadata={"help": "count the tokens trained on, for compute.json (non_padding, all, no)"},
    )
    eval_generate_samples: int = field(
        default=0,
        metadata={
            "help": "at each evaluation, answer this many validation clips with constrained "
            "generation and log eval_ade, eval_fde, eval_speed_mae, eval_curvature_mae"
        },
    )
    max_bad_samples: float = field(
        default=0.05,
        metadata={
            "help": "share of training samples that may fail their checks (answer, fps, "
            "video) and be left out; more stops the run before the first step"
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


def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataArguments, TrainingArguments) of the command line."""
    argv = sys.argv[1:] if argv is None else argv
    if torch.cuda.is_available():
        if not any(a.startswith(("--bf16", "--fp16")) for a in argv):
            argv = [*argv, "--bf16", "True"]
    elif not any(a.startswith("--use_cpu") for a in argv):
        # Without a GPU, several processes (torchrun, DeepSpeed) only form one job on gloo
        # when the Trainer is told it runs on CPU.
        argv = [*argv, "--use_cpu", "True"]
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
        data_args.video_settings()
    except ValueError as err:
        raise UserError(str(err)) from None
    if training_args.gradient_checkpointing_kwargs is None:
        training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}
    return model_args, data_args, training_args


def tune_flags(model_args: ModelArguments) -> TuneFlags:
    return TuneFlags(model_args.tune_mm_vision, model_args.tune_mm_mlp, model_args.tune_mm_llm)


def lora_settings(model_args: ModelArguments) -> LoraSettings | None:
    if not model_args.lora_enable:
        return None
    return LoraSettings(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout)


def tuning_of(model_args: ModelArguments) -> Tuning:
    """What checkpoints record of how they were trained."""
    return Tuning.of_run(tune_flags(model_args), lora_settings(model_args), model_args.quantization)


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


def generation_metrics(data_args, training_args, processor, settings, answer_format):
    """Task metrics at each evaluation when --eval_generate_samples > 0, else None."""
    if training_args.eval_generate_samples <= 0:
        return None
    samples = load_samples(dataset_specs(data_args.eval_dataset_use))
    return GenerationMetrics(
        samples[: training_args.eval_generate_samples],
        processor,
        settings,
        answer_format,
        training_args.per_device_eval_batch_size,
    )


def check_run(model_args, data_args, training_args) -> None:
    """What the launchers' pre-flight checks, for train.py run without them."""
    if training_args.eval_generate_samples > 0 and not data_args.eval_dataset_use:
        raise UserError("--eval_generate_samples needs validation data (--eval_dataset_use)")
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise UserError("--num_train_epochs 0 and no --max_steps: nothing would train")
    if not 0 <= training_args.max_bad_samples <= 1:
        raise UserError(f"--max_bad_samples {training_args.max_bad_samples}: a share in [0, 1]")
    inputs = {"--model_name_or_path": model_args.model_name_or_path}
    try:
        for use in (data_args.dataset_use, data_args.eval_dataset_use):
            for entry in data_list(dataset_specs(use)):
                inputs[entry["annotation_path"]] = Path(entry["annotation_path"]).parent
    except ValueError as err:
        raise UserError(str(err)) from None
    check_apart(training_args.output_dir, inputs)


def run(parsed: tuple[ModelArguments, DataArguments, TrainingArguments]) -> int:
    model_args, data_args, training_args = parsed
    logging.basicConfig(
        level=logging.INFO if training_args.local_rank in (-1, 0) else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    check_run(model_args, data_args, training_args)
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
        model = build_model(model_args, training_args)
    except (ValueError, OSError) as err:
        raise UserError(str(err).splitlines()[0]) from None
    inference_files = InferenceFiles(
        processor, settings, answer_format, prompt, tuning_of(model_args)
    )
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
            ComputeReport(os.environ.get("PEAK_TFLOPS")),
        ],
        projector_lr=model_args.mm_projector_lr,
        vision_lr=model_args.vision_tower_lr,
        label_only_logits=training_args.label_only_logits,
        generation_metrics=generation_metrics(
            data_args, training_args, processor, settings, answer_format
        ),
    )
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
    sys.exit(main())
