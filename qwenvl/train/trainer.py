"""The HF Trainer with per-module learning rates, the label-only loss, and task metrics beside
eval_loss."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from qwenvl.cli import DiskFull, disk_full
from qwenvl.data.collator import SKIPPED
from qwenvl.data.dataset import IGNORE_INDEX
from qwenvl.train.compute import TokenCount
from qwenvl.train.setup import component

MASTERS = "fp32_masters.safetensors"  # in a checkpoint whose weights are saved in bf16

_NO_DECAY = ("bias", "norm", "ln_", "layernorm")


def parameter_groups(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    projector_lr: float | None,
    vision_lr: float | None,
) -> list[dict]:
    """Optimizer groups split by component (llm / mlp projector / vision) and weight decay."""
    rates = {"llm": lr, "mlp": projector_lr or lr, "vision": vision_lr or lr}
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            # Under ZeRO-3 a parameter is a flat shard; ds_shape is its real shape.
            ndim = len(getattr(param, "ds_shape", param.shape))
            decay = ndim >= 2 and not any(k in name.lower() for k in _NO_DECAY)
            groups.setdefault((component(name), decay), []).append(param)
    return [
        {
            "params": params,
            "lr": rates[part],
            "weight_decay": weight_decay if decay else 0.0,
            "group_name": f"{part}{'' if decay else '_no_decay'}",
        }
        for (part, decay), params in sorted(groups.items())
    ]


class QwenVLTrainer(Trainer):
    """Trainer whose optimizer gives the projector and vision tower their own learning rates,
    and whose evaluation can add task metrics from generated answers.

    DeepSpeed without an optimizer block in its config builds on this optimizer, so the
    groups hold there too.
    """

    def __init__(
        self,
        *args,
        projector_lr: float | None = None,
        vision_lr: float | None = None,
        generation_metrics=None,
        label_only_logits: bool = True,
        token_count: TokenCount | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.skipped_samples: dict[str, str] = {}  # id -> why, found while reading batches
        self.token_count = token_count or TokenCount()
        self.eval_seconds = 0.0  # evaluation and generation, kept apart from training time
        self.group_settings: list[dict] = []  # each optimizer group's own hyperparameters
        self.projector_lr = projector_lr
        self.vision_lr = vision_lr
        self.generation_metrics = generation_metrics
        self.label_only_logits = label_only_logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The Trainer's loss, computed on labelled positions only (label_only_loss), without
        a KV cache (the model's config asks for one outside checkpointed training: at 4B about
        2 GiB per evaluation batch for nothing). Samples the dataset skipped on the way to this
        batch are counted in `skipped_samples`."""
        for sample_id, why in inputs.pop(SKIPPED, ()):
            self.skipped_samples[sample_id] = why
        if model.training:
            self.token_count.add(inputs["attention_mask"])
        if not self.label_only_logits or "labels" not in inputs:
            inputs = {**inputs, "use_cache": False}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = label_only_loss(model, inputs, num_items_in_batch)
        if (
            self.args.average_tokens_across_devices
            and self.model_accepts_loss_kwargs
            and num_items_in_batch is not None
        ):
            # As Trainer.compute_loss: num_items_in_batch counts every rank's tokens, while
            # gradients are averaged over ranks.
            loss_scale = self.accelerator.num_processes // self.get_tp_size()
            loss *= loss_scale if self.args.n_gpu <= 1 else self.args.n_gpu
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        """eval_loss, plus task metrics in metres from generated answers when asked for
        (qwenvl.train.task_metrics), logged beside it."""
        started = time.monotonic()
        try:
            return self._evaluate_with_task_metrics(*args, **kwargs)
        finally:
            self.eval_seconds += time.monotonic() - started

    def _evaluate_with_task_metrics(self, *args, **kwargs) -> dict[str, float]:
        # Not named `_evaluate`: the Trainer's loop calls its own `_evaluate`, which calls
        # `evaluate` above; overriding it would bypass the timing compute.json reports.
        metrics = super().evaluate(*args, **kwargs)
        if self.generation_metrics is not None:
            # Under the trainer's autocast, as its forward runs: generate() calls the vision
            # tower outside the prepared forward, where bf16 frozen weights would meet the fp32
            # masters of the trained projector.
            with self.accelerator.autocast():
                task = self.generation_metrics(
                    self.model, self.args.process_index, self.args.world_size
                )
            if task:
                self.log(task)
                metrics.update(task)
        return metrics

    def _saves_in_compute_dtype(self) -> bool:
        """A full fine-tune in bf16 without DeepSpeed holds fp32 masters of what it trains: its
        weights are saved in bf16, as DeepSpeed saves its 16-bit weights (half the disk, and
        the dtype the model is loaded and run in)."""
        from peft import PeftModel

        model = self.accelerator.unwrap_model(self.model)
        return self.args.bf16 and not self.is_deepspeed_enabled and not isinstance(model, PeftModel)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self._saves_in_compute_dtype():
            state_dict = state_dict if state_dict is not None else self.model.state_dict()
            state_dict = {
                key: value.to(torch.bfloat16) if value.is_floating_point() else value
                for key, value in state_dict.items()
            }
        super()._save(output_dir, state_dict)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint (with the fp32 masters beside bf16 weights, for an exact
        resume), and on a full disk one line naming it (a checkpoint left half-written is never
        resumed from: qwenvl.train.resume checks every file)."""
        folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
            if self._saves_in_compute_dtype() and self.args.should_save:
                masters = {
                    name: param.detach().float().contiguous()
                    for name, param in self.accelerator.unwrap_model(model).named_parameters()
                    if param.requires_grad
                }
                save_file(masters, str(folder / MASTERS))
        except (OSError, RuntimeError) as err:
            if not disk_full(err, str(folder.parent)):
                raise
            raise DiskFull(
                f"{folder}: no space left on device while saving this checkpoint (it is "
                "incomplete and will not be resumed from)"
            ) from None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The Trainer's load, then the fp32 masters over the bf16 weights it loaded."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        masters = Path(resume_from_checkpoint) / MASTERS
        if masters.is_file():
            saved = load_file(str(masters))
            target = self.accelerator.unwrap_model(model if model is not None else self.model)
            with torch.no_grad():
                for name, param in target.named_parameters():
                    if name in saved:
                        param.copy_(saved[name])

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        """The Trainer's load, then, after DeepSpeed loaded a universal checkpoint (a resume on
        another number of processes), what that load gets wrong in DeepSpeed 0.19: it hands
        every parameter group the same `step` tensor (the fused AdamW then counts each step
        once per group, which breaks Adam's bias correction) and group 0's hyperparameters."""
        super()._load_optimizer_and_scheduler(checkpoint)
        config = getattr(self.args, "hf_deepspeed_config", None)
        universal = config is not None and config.config.get("checkpoint", {}).get("load_universal")
        if not (checkpoint and self.is_deepspeed_enabled and universal):
            return
        inner = self.model_wrapped.optimizer.optimizer
        for state in inner.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
        scheduler = self.lr_scheduler
        rates = scheduler.get_last_lr() if scheduler is not None else []
        peaks = getattr(scheduler, "base_lrs", [])  # the scheduler's state holds each group's
        groups = inner.param_groups
        if len(self.group_settings) == len(groups):
            for number, (group, ours) in enumerate(zip(groups, self.group_settings, strict=True)):
                group.update(ours)
                if len(rates) == len(groups) and len(peaks) == len(groups):
                    group["lr"], group["initial_lr"] = rates[number], peaks[number]

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = parameter_groups(
                model or self.model,
                self.args.learning_rate,
                self.args.weight_decay,
                self.projector_lr,
                self.vision_lr,
            )
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
            optimizer_kwargs.pop("lr", None)
            self.group_settings = [
                {"weight_decay": g["weight_decay"], "group_name": g["group_name"]} for g in groups
            ]
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


def label_only_loss(model, inputs: dict, num_items_in_batch=None):
    """(loss, outputs) with the LM head and the loss on the labelled positions only.

    About 90% of a sample's tokens are video with label -100, yet the full path projects every
    position onto the 151,936-token vocabulary and upcasts those logits to fp32 for the loss.
    Here the model's `logits_to_keep` mask keeps the positions whose next token is labelled,
    and the loss is the same token-mean cross-entropy (sum over `num_items_in_batch` when the
    Trainer counts labelled tokens across gradient accumulation).
    """
    labels = inputs["labels"]
    next_labelled = labels[:, 1:] != IGNORE_INDEX
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = next_labelled  # position t predicts token t + 1
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    outputs = model(**model_inputs, logits_to_keep=keep, use_cache=False)
    targets = labels[:, 1:][next_labelled].to(outputs.logits.device)
    loss = torch.nn.functional.cross_entropy(outputs.logits.float(), targets, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    return loss / count, outputs
