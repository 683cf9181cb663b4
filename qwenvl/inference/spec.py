"""What a model to answer clips with was trained on, read from its folder before any weights
load: its video settings, answer format and prompt, and for a LoRA adapter its base. Every
backend builds its inputs from this, so a checkpoint is asked exactly as it was trained."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings
from qwenvl.checkpoint import Tuning
from qwenvl.files import first_stored
from qwenvl.video import VideoSettings

logger = logging.getLogger(__name__)
# Files only a checkpoint trained here holds: such a checkpoint must hold its prompt too.
TRAINED_HERE = (VideoSettings.FILE, Tuning.FILE, "training.json")


@dataclass(frozen=True)
class ModelSpec:
    path: str
    """The model as given: a hub id, a folder, or a LoRA adapter's folder."""
    base: str | None
    """A LoRA adapter's base model (None: the model loads whole)."""
    video: VideoSettings
    answer_format: AnswerFormat
    prompt: PromptSettings | None
    """As stored with the model; None for one that records none (a base model)."""
    tuning: Tuning | None
    processor_path: str
    """Where its processor is saved (the adapter's folder, else its base)."""

    @property
    def kind(self) -> str:
        return "adapter" if self.base else "full"

    def user_prompt(self) -> PromptSettings:
        """The prompt to ask this model with: its own, else the built-in one."""
        return self.prompt or PromptSettings()

    def local_inputs(self) -> dict[str, str | None]:
        """The model's folders on this machine (outputs must stay apart from them)."""
        local = {"--model-path": self.path}
        if self.base and Path(self.base).expanduser().exists():
            local["its base model"] = self.base
        return local


def adapter_base(path: Path) -> str | None:
    """The base model a LoRA adapter folder names, or None when `path` is no adapter."""
    config = path / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text())["base_model_name_or_path"]
    except (ValueError, KeyError) as err:
        raise ValueError(f"{config}: cannot be read ({err})") from None


def _has_processor(path: Path) -> bool:
    return any(
        (path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")
    )


def read_spec(
    model_path: str, base_model: str | None = None, data_dir: str | Path | None = None
) -> ModelSpec:
    """The spec of a model: a LoRA adapter on its base (or `base_model`), anything else whole.

    Video settings, answer format and prompt come from the checkpoint, else from the base
    model, else (answer format) from `data_dir`, the data being answered; video settings then
    fall back to the VIDEO_* environment variables or the defaults (a hub model has none). A
    checkpoint trained here that lacks its prompt.json is refused (ValueError naming the file):
    its prompt is never guessed; a model that records none (a base model) has None.
    """
    path = Path(model_path)
    adapter = adapter_base(path)
    base = (base_model or adapter) if adapter is not None else None
    where = [path, base] if base else [path]
    video = first_stored(VideoSettings, *where)
    if video is None:
        video = VideoSettings.from_env()
        logger.warning(
            "no video settings stored with %s; using VIDEO_* or defaults: %s", model_path, video
        )
    answer_format = first_stored(AnswerFormat, *where, data_dir) or AnswerFormat()
    prompt = first_stored(PromptSettings, *where)
    if prompt is None:
        trained_here = path.is_dir() and any((path / name).is_file() for name in TRAINED_HERE)
        if trained_here:
            raise ValueError(
                f"{path / PromptSettings.FILE} is missing: this checkpoint does not say which "
                "prompt it was trained on (copy the prompt.json of its training data into it)"
            )
    tuning = Tuning.load(path) if path.is_dir() else None
    processor = model_path if _has_processor(path) or not base else base
    return ModelSpec(model_path, base, video, answer_format, prompt, tuning, processor)
