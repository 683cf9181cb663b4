"""What every checkpoint and merged model carries besides its weights, written in one place: the
processor (its video config set to training's), the video settings, the answer format, the
prompt and, for a checkpoint, how it was trained (tuning.json). With them a checkpoint is usable
alone: evaluation and prediction read them back from it, and plain transformers (or vLLM)
samples clips from the saved processor as training did."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qwenvl.answer import AnswerFormat
from qwenvl.chat import PromptSettings
from qwenvl.files import StoredSettings
from qwenvl.video import VideoSettings, describe_training_video


@dataclass
class InferenceFiles:
    processor: object
    video: VideoSettings
    answer_format: AnswerFormat
    prompt: PromptSettings | None  # None: trained on files that do not record their prompt
    tuning: StoredSettings | None = None  # qwenvl.train.settings.Tuning of a training run

    def __post_init__(self) -> None:
        # Our own decoding passes its sampling and size explicitly, so this changes nothing
        # for training; it is what the saved processor config says to everyone else.
        describe_training_video(self.processor, self.video)

    def save(self, directory: str | Path) -> None:
        self.processor.save_pretrained(directory)
        self.video.save(directory)
        self.answer_format.save(directory)
        for settings in (self.prompt, self.tuning):
            if settings is not None:
                settings.save(directory)
