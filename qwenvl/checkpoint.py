"""What every checkpoint and merged model carries besides its weights, written in one place: the
processor (its video config set to training's), the video settings, the answer format, the
prompt and, for a checkpoint, how it was trained (tuning.json). With them a checkpoint is usable
alone: evaluation and prediction read them back from it, and plain transformers (or vLLM)
samples clips from the saved processor as training did."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings
from qwenvl.files import StoredSettings
from qwenvl.video import VideoSettings, describe_training_video


@dataclass(frozen=True)
class Tuning(StoredSettings):
    """How a checkpoint was trained, stored with it as tuning.json: which parts trained, LoRA's
    shape (None for full fine-tuning) and the quantization of a QLoRA base, which evaluation,
    prediction and merging load it on."""

    FILE: ClassVar[str] = "tuning.json"
    tune_vision: bool
    tune_mlp: bool
    tune_llm: bool
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    quantization: str | None = None


@dataclass
class InferenceFiles:
    processor: object
    video: VideoSettings
    answer_format: AnswerFormat
    prompt: PromptSettings | None  # None: trained on files that do not record their prompt
    tuning: Tuning | None = None
    training: StoredSettings | None = None  # qwenvl.train.resume.TrainingRecord of a run

    def __post_init__(self) -> None:
        # Our own decoding passes its sampling and size explicitly, so this changes nothing
        # for training; it is what the saved processor config says to everyone else.
        describe_training_video(self.processor, self.video)

    def save(self, directory: str | Path) -> None:
        self.processor.save_pretrained(directory)
        self.video.save(directory)
        self.answer_format.save(directory)
        for settings in (self.prompt, self.tuning, self.training):
            if settings is not None:
                settings.save(directory)
