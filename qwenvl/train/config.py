"""Every training setting, once: its launcher variable, train.py's argument, default, range and
help, and the two presets (LoRA, full fine-tuning) as data.

The launchers map environment variables to these settings and check them before torchrun
starts (qwenvl.train.launch); train.py takes its defaults and checks from here too, so a run
launched or run directly trains the same way (schedule, warmup and weight decay included).
Light on purpose: no torch, so the launchers' checks take a fraction of a second.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields

from qwenvl.video import VideoSettings

KINDS = ("lora", "full")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class SettingError(ValueError):
    """A setting that cannot run; str() is the one line, naming the variable."""


@dataclass(frozen=True)
class Setting:
    name: str
    """The launchers' environment variable."""
    kind: str | tuple[str, ...]
    """int, float, bool, text, or the tuple of the values it takes."""
    default: object
    """Its value unless a preset or the user sets it (None: unset, "" for text)."""
    help: str
    flags: tuple[str, ...] = ()
    """train.py's arguments it sets (none: the launcher's own, or handled apart)."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """The value must be above `low` (else at least `low`)."""
    high_open: bool = False
    optional: bool = False
    """Empty is allowed and means "not set"."""
    only: str | None = None
    """The one launcher that has it (lora or full); None: both."""
    resume: bool = False
    """A resumed run must keep it: it decides what trains, how, or on what."""


_VIDEO = VideoSettings()

SETTINGS: tuple[Setting, ...] = (
    # --- model and data
    Setting("MODEL_PATH", "text", "Qwen/Qwen3-VL-4B-Instruct", "hub id or local folder of the "
            "base model", ("model_name_or_path",), resume=True),
    Setting("DATASETS", "text", "physical_ai_driving", "training data: registry names or "
            "train.json paths, comma-separated, each maybe name%pct", ("dataset_use",),
            resume=True),
    Setting("EVAL_DATASETS", "text", "", "validation data, same syntax; empty: no evaluation",
            ("eval_dataset_use",)),
    Setting("EVAL_GENERATE_SAMPLES", "int", 0, "at each evaluation, also answer this many "
            "validation clips and log eval_ade, eval_fde, eval_speed_mae, eval_curvature_mae",
            ("eval_generate_samples",), low=0),
    Setting("OUTPUT_DIR", "text", None, "where checkpoints and the final model go; relaunching "
            "into it resumes", ("output_dir",)),
    # --- what trains
    Setting("TUNE_MM_VISION", "bool", False, "train the vision encoder", ("tune_mm_vision",),
            resume=True),
    Setting("TUNE_MM_MLP", "bool", True, "train the vision-language projector (the mergers)",
            ("tune_mm_mlp",), resume=True),
    Setting("TUNE_MM_LLM", "bool", True, "train the language model", ("tune_mm_llm",),
            resume=True),
    Setting("LORA_R", "int", 64, "LoRA rank", ("lora_r",), low=1, only="lora", resume=True),
    Setting("LORA_ALPHA", "int", 128, "LoRA alpha (scale = alpha / r)", ("lora_alpha",), low=1,
            only="lora", resume=True),
    Setting("LORA_DROPOUT", "float", 0.05, "LoRA dropout", ("lora_dropout",), low=0, high=1,
            high_open=True, only="lora", resume=True),
    Setting("QUANT", ("", "4bit"), "", "4bit: QLoRA, the language model in bitsandbytes NF4 "
            "(CUDA)", ("quantization",), optional=True, only="lora", resume=True),
    # --- optimizer and schedule
    Setting("EPOCHS", "float", None, "passes over the training data (unless MAX_STEPS > 0)",
            ("num_train_epochs",), low=0, resume=True),
    Setting("MAX_STEPS", "int", -1, "optimizer steps; -1: as many as EPOCHS take",
            ("max_steps",), low=-1, resume=True),
    Setting("BATCH_SIZE", "int", None, "samples per GPU per step (and per evaluation batch)",
            ("per_device_train_batch_size", "per_device_eval_batch_size"), low=1, resume=True),
    Setting("GRAD_ACCUM", "int", None, "micro-batches accumulated per optimizer step",
            ("gradient_accumulation_steps",), low=1, resume=True),
    Setting("LR", "float", None, "peak learning rate", ("learning_rate",), low=0, low_open=True,
            resume=True),
    Setting("MM_PROJECTOR_LR", "float", None, "learning rate of the projector (default: LR)",
            ("mm_projector_lr",), low=0, low_open=True, optional=True, only="full", resume=True),
    Setting("VISION_TOWER_LR", "float", None, "learning rate of the vision encoder "
            "(default: LR)", ("vision_tower_lr",), low=0, low_open=True, optional=True,
            only="full", resume=True),
    Setting("LR_SCHEDULER", ("cosine", "linear", "constant", "constant_with_warmup"), "cosine",
            "learning-rate schedule after warmup", ("lr_scheduler_type",), resume=True),
    Setting("WARMUP_RATIO", "float", 0.03, "share of the steps the learning rate warms up over",
            ("warmup_steps",), low=0, high=1, high_open=True, resume=True),
    Setting("WEIGHT_DECAY", "float", 0.0, "AdamW weight decay (not on biases and norms)",
            ("weight_decay",), low=0, resume=True),
    Setting("SEED", "int", 42, "seed of initialisation, sampling and data order", ("seed",),
            low=0, resume=True),
    Setting("DEEPSPEED_CONFIG", "text", None, "DeepSpeed config file (zero3.json, "
            "zero3_offload.json); empty: none", ("deepspeed",), optional=True, resume=True),
    Setting("PRECISION", ("auto", "bf16", "fp32"), "auto", "auto: bf16 on a GPU, fp32 on a CPU; "
            "bf16 also runs a CPU in the GPU's regime", resume=True),
    # --- samples and video (per frame; one token per 32x32 pixels per 2 frames)
    Setting("MODEL_MAX_LENGTH", "int", 8192, "longest sample in tokens; longer ones are left "
            "out, never cut", ("model_max_length",), low=1, resume=True),
    Setting("MAX_BAD_SAMPLES", "float", 0.05, "share of training samples that may fail their "
            "checks and be left out; more stops the run before the first step",
            ("max_bad_samples",), low=0, high=1),
    Setting("VIDEO_FPS", "float", _VIDEO.fps, "frames per second sampled from each clip",
            ("video_fps",), low=0, low_open=True, resume=True),
    Setting("VIDEO_MIN_FRAMES", "int", _VIDEO.min_frames, "fewest frames per clip",
            ("video_min_frames",), low=1, resume=True),
    Setting("VIDEO_MAX_FRAMES", "int", _VIDEO.max_frames, "most frames per clip",
            ("video_max_frames",), low=1, resume=True),
    Setting("VIDEO_MIN_PIXELS", "int", _VIDEO.min_pixels, "fewest pixels per frame",
            ("video_min_pixels",), low=1, resume=True),
    Setting("VIDEO_MAX_PIXELS", "int", _VIDEO.max_pixels, "most pixels per frame",
            ("video_max_pixels",), low=1, resume=True),
    Setting("VIDEO_SIDE_MIN_FRAMES", "int", _VIDEO.side_min_frames, "fewest frames per clip "
            "of another camera than the segments' own (datasets of several cameras)",
            ("video_side_min_frames",), low=1, resume=True),
    Setting("VIDEO_SIDE_MAX_FRAMES", "int", _VIDEO.side_max_frames, "most frames per clip of "
            "another camera", ("video_side_max_frames",), low=1, resume=True),
    Setting("VIDEO_SIDE_MIN_PIXELS", "int", _VIDEO.side_min_pixels, "fewest pixels per frame "
            "of another camera", ("video_side_min_pixels",), low=1, resume=True),
    Setting("VIDEO_SIDE_MAX_PIXELS", "int", _VIDEO.side_max_pixels, "most pixels per frame of "
            "another camera", ("video_side_max_pixels",), low=1, resume=True),
    # --- saving, logging, resuming
    Setting("SAVE_STEPS", "int", 100, "a checkpoint (and an evaluation) every this many steps",
            ("save_steps",), low=1),
    Setting("SAVE_TOTAL_LIMIT", "int", None, "checkpoints kept (the oldest are deleted)",
            ("save_total_limit",), low=1),
    Setting("LOGGING_STEPS", "int", 10, "log the loss every this many steps",
            ("logging_steps",), low=1),
    Setting("REPORT_TO", ("none", "tensorboard", "wandb"), "none", "where logs go",
            ("report_to",)),
    Setting("RESUME", "bool", True, "continue from the newest complete checkpoint in "
            "OUTPUT_DIR; 0 starts afresh", ("auto_resume",)),
    Setting("DATALOADER_WORKERS", "int", 4, "data loader processes per GPU",
            ("dataloader_num_workers",), low=0),
    Setting("PEAK_TFLOPS", "float", None, "dense bf16 peak of one GPU for MFU, where the table "
            "of known GPUs lacks it", ("peak_tflops",), low=0, low_open=True, optional=True),
    # --- processes and nodes (torchrun's)
    Setting("NPROC_PER_NODE", "int", None, "processes on this node (default: one per visible "
            "GPU, 1 without)", low=1, optional=True),
    Setting("NNODES", "int", 1, "nodes in the job", low=1),
    Setting("NODE_RANK", "int", 0, "this node's rank, 0 .. NNODES-1", low=0),
    Setting("MASTER_ADDR", "text", "127.0.0.1", "address of node 0 (every node must reach it)"),
    Setting("MASTER_PORT", "int", None, "rendezvous port on node 0 (default: a free one on one "
            "node, 29500 across nodes)", low=1, high=65535, optional=True),
    Setting("OMP_NUM_THREADS", "int", None, "CPU threads per process (default: cores / "
            "processes)", low=1, optional=True),
)  # fmt: skip

BY_NAME = {setting.name: setting for setting in SETTINGS}
MULTI_NODE_PORT = 29500

# The presets: what each launcher trains unless told otherwise (the seed guide's defaults).
PRESETS: dict[str, dict[str, object]] = {
    "lora": {
        "OUTPUT_DIR": "checkpoints/physical_ai_driving_lora",
        "EPOCHS": 5.0,
        "BATCH_SIZE": 4,
        "GRAD_ACCUM": 2,
        "LR": 2e-4,
        "SAVE_TOTAL_LIMIT": 3,
        "DEEPSPEED_CONFIG": "",  # optional for LoRA, e.g. zero3.json
    },
    "full": {
        "OUTPUT_DIR": "checkpoints/physical_ai_driving",
        "EPOCHS": 3.0,
        "BATCH_SIZE": 2,
        "GRAD_ACCUM": 4,
        "LR": 1e-5,
        "SAVE_TOTAL_LIMIT": 2,
        "DEEPSPEED_CONFIG": "zero3.json",  # zero3_offload.json offloads to the CPU
    },
}

# Names users reach for that are not ours -> the setting they mean.
ALIASES = {
    "LEARNING_RATE": "LR",
    "LEARNINGRATE": "LR",
    "EPOCH": "EPOCHS",
    "NUM_EPOCHS": "EPOCHS",
    "NUM_TRAIN_EPOCHS": "EPOCHS",
    "BATCH": "BATCH_SIZE",
    "BATCHSIZE": "BATCH_SIZE",
    "PER_DEVICE_BATCH_SIZE": "BATCH_SIZE",
    "NUM_GPUS": "NPROC_PER_NODE",
    "GPUS": "NPROC_PER_NODE",
    "N_GPUS": "NPROC_PER_NODE",
    "NGPUS": "NPROC_PER_NODE",
    "GRADIENT_ACCUMULATION_STEPS": "GRAD_ACCUM",
    "GRAD_ACCUMULATION": "GRAD_ACCUM",
    "STEPS": "MAX_STEPS",
    "WARMUP": "WARMUP_RATIO",
    "WARMUP_STEPS": "WARMUP_RATIO",
    "SCHEDULER": "LR_SCHEDULER",
    "LR_SCHEDULER_TYPE": "LR_SCHEDULER",
    "DEEPSPEED": "DEEPSPEED_CONFIG",
    "MODEL": "MODEL_PATH",
    "MODEL_NAME": "MODEL_PATH",
    "DATASET": "DATASETS",
    "OUTPUT": "OUTPUT_DIR",
    "OUT_DIR": "OUTPUT_DIR",
    "LORA_RANK": "LORA_R",
}
# Variables close to ours by spelling are checked only under our own prefixes, so that the
# rest of a user's environment is never taken for a misspelt setting.
_OWN_PREFIXES = ("VIDEO_", "LORA_", "TUNE_", "EVAL_", "SAVE_", "MAX_", "MODEL_", "MM_",
                 "VISION_", "DATALOADER_", "LOGGING_", "WARMUP", "WEIGHT_", "LR_", "GRAD_",
                 "BATCH_", "NPROC", "NNODE", "NODE_", "MASTER_", "DEEPSPEED", "PEAK_", "RESUME",
                 "PRECISION", "EPOCH", "SEED", "QUANT", "REPORT", "OUTPUT", "DATASET")  # fmt: skip


def settings_of(kind: str) -> tuple[Setting, ...]:
    """The settings the `kind` launcher takes."""
    return tuple(s for s in SETTINGS if s.only in (None, kind))


def defaults(kind: str) -> dict[str, object]:
    """Every setting's default for a launcher: the setting's own, then the kind's preset."""
    return {s.name: PRESETS[kind].get(s.name, s.default) for s in settings_of(kind)}


def shown(value) -> str:
    """A value as the launchers print and take it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse(setting: Setting, raw: str):
    """The typed value of a setting given as text (an environment variable); SettingError with
    the variable's one line when it is not one."""
    text = raw.strip()
    if text == "" and (setting.optional or setting.default in (None, "")):
        return setting.default if setting.kind == "text" else None
    where = f"{setting.name}={raw}"
    if setting.kind == "bool":
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise SettingError(f"{where}: expected one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
    if isinstance(setting.kind, tuple):
        if text not in setting.kind:
            choices = ", ".join(c or '""' for c in setting.kind)
            raise SettingError(f"{where}: expected one of {choices}")
        return text
    if setting.kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise SettingError(f"{where}: not an integer") from None
    elif setting.kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise SettingError(f"{where}: not a number") from None
    else:
        return raw
    check(setting, value, raw)
    return value


def check(setting: Setting, value, raw: str | None = None) -> None:
    """SettingError when a typed value is not finite or out of the setting's range."""
    if value is None or setting.kind not in ("int", "float"):
        return
    where = f"{setting.name}={shown(value) if raw is None else raw}"
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{where}: not a finite number")
    if setting.low is not None:
        if setting.low_open and not value > setting.low:
            raise SettingError(
                f"{where}: must be {'positive' if setting.low == 0 else f'above {setting.low:g}'}"
            )
        if not setting.low_open and value < setting.low:
            raise SettingError(f"{where}: must be at least {setting.low:g}")
    if setting.high is not None:
        if setting.high_open and not value < setting.high:
            raise SettingError(f"{where}: must be below {setting.high:g}")
        if not setting.high_open and value > setting.high:
            raise SettingError(f"{where}: must be at most {setting.high:g}")


def check_together(values: dict[str, object]) -> None:
    """What no single setting shows: nothing to train, a node rank past the nodes, bad video
    bounds. `values` holds typed values by setting name."""
    if values.get("NODE_RANK", 0) >= values.get("NNODES", 1):
        raise SettingError(
            f"NODE_RANK={values['NODE_RANK']}: must be below NNODES={values['NNODES']}"
        )
    if values["MAX_STEPS"] == 0:
        raise SettingError("MAX_STEPS=0: nothing would train (-1 trains for EPOCHS)")
    if values["MAX_STEPS"] < 0 and not values["EPOCHS"] > 0:
        raise SettingError(
            f"EPOCHS={shown(values['EPOCHS'])}: nothing would train (set EPOCHS > 0)"
        )
    if values["EVAL_GENERATE_SAMPLES"] and not values["EVAL_DATASETS"]:
        raise SettingError("EVAL_GENERATE_SAMPLES needs validation data: set EVAL_DATASETS")
    if not any(values[name] for name in ("TUNE_MM_VISION", "TUNE_MM_MLP", "TUNE_MM_LLM")):
        raise SettingError(
            "TUNE_MM_VISION, TUNE_MM_MLP and TUNE_MM_LLM are all False: nothing trains"
        )
    try:
        video_settings(values)
    except ValueError as err:
        raise SettingError(str(err)) from None


def video_settings(values: dict[str, object]) -> VideoSettings:
    """The VIDEO_* settings as the VideoSettings every stage stores and reads."""
    return VideoSettings(
        **{f.name: values[f"VIDEO_{f.name.upper()}"] for f in fields(VideoSettings)}
    )


def resolve(env: dict[str, str], kind: str) -> dict[str, object]:
    """Every setting of the `kind` launcher as a typed value: the environment's where set, the
    defaults elsewhere; SettingError names the first that cannot run (or a variable that looks
    like a setting but is not one)."""
    misnamed(env)
    values = {}
    for setting in settings_of(kind):
        raw = env.get(setting.name)
        default = PRESETS[kind].get(setting.name, setting.default)
        if raw is None or (raw.strip() == "" and setting.name != "DEEPSPEED_CONFIG"):
            values[setting.name] = default
        else:
            values[setting.name] = parse(setting, raw)
    check_together(values)
    return values


def misnamed(env: dict[str, str]) -> None:
    """SettingError for a variable that is not a setting but looks like one (LEARNING_RATE for
    LR): set, it would be ignored without a word."""
    known = set(BY_NAME)
    for name in sorted(env):
        if name in known:
            continue
        meant = ALIASES.get(name)
        if meant is None and name.startswith(_OWN_PREFIXES):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            meant = close[0] if close else None
        if meant is not None:
            raise SettingError(
                f"{name}={env[name]}: not a setting of the launchers; did you mean {meant}? "
                "(--help lists them)"
            )


def train_arguments(values: dict[str, object], kind: str) -> list[str]:
    """train.py's command line for the settings (the launcher's own ones left out). A setting
    left empty whose train.py default is not (the full preset's DeepSpeed config) is passed
    empty, so train.py does not fall back to that default."""
    preset = flag_defaults(kind)
    args = ["--lora_enable", "True"] if kind == "lora" else []
    for setting in settings_of(kind):
        value = values[setting.name]
        if not setting.flags:
            continue
        if value is None or (value == "" and setting.optional):
            args += [
                a for f in setting.flags if preset.get(f) not in (None, "") for a in (f"--{f}", "")
            ]
            continue
        for flag in setting.flags:
            args += [f"--{flag}", shown(value)]
    if values["PRECISION"] != "auto":
        args += ["--bf16", shown(values["PRECISION"] == "bf16")]
    return args


def flag_defaults(kind: str) -> dict[str, object]:
    """train.py's argument defaults for a kind of run (its preset included), by argument."""
    out = {}
    for name, value in defaults(kind).items():
        for flag in BY_NAME[name].flags:
            if value is not None:
                out[flag] = value
    return out


def values_of_arguments(arguments: dict[str, object], kind: str) -> dict[str, object]:
    """The settings' values from train.py's parsed arguments (by argument name)."""
    values = {}
    for setting in settings_of(kind):
        if setting.flags:
            values[setting.name] = arguments.get(setting.flags[0], setting.default)
    return values


def help_text(kind: str) -> str:
    """The launcher's --help: every setting, its default for this launcher, and what it does."""
    what = "LoRA" if kind == "lora" else "full"
    lines = [
        f"usage: [VARIABLE=value ...] ./train_physical_ai{'_lora' if kind == 'lora' else ''}.sh "
        "[train.py arguments ...]",
        "",
        f"{what} fine-tuning of Qwen3-VL on 1-second driving clips. Every setting is an "
        "environment variable (defaults below); they are all checked before torchrun starts.",
        "Arguments after the launcher go to scripts/train.py (python scripts/train.py --help).",
        "",
    ]
    for setting in settings_of(kind):
        default = defaults(kind)[setting.name]
        lines.append(f"  {setting.name:<22} {shown(default) or '-':<28} {setting.help}")
    return "\n".join(lines)


@dataclass(frozen=True)
class TuneFlags:
    """Which parts of Qwen3-VL train (TUNE_MM_VISION / TUNE_MM_MLP / TUNE_MM_LLM), with LoRA and
    in full alike."""

    vision: bool
    mlp: bool
    llm: bool

    def __post_init__(self) -> None:
        if not (self.vision or self.mlp or self.llm):
            raise ValueError(
                "nothing to train: set one of --tune_mm_vision/--tune_mm_mlp/--tune_mm_llm"
            )


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's shape: rank, alpha (scale = alpha / r), dropout; defaults as the settings'."""

    r: int = BY_NAME["LORA_R"].default
    alpha: int = BY_NAME["LORA_ALPHA"].default
    dropout: float = BY_NAME["LORA_DROPOUT"].default
