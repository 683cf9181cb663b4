"""The prompt, and every chat shape built from it: the dataset row, the training sample, and the
messages the model is shown in training and at inference.

The prompt is stored as prompt.json with the dataset and with every checkpoint trained on it;
evaluation and prediction ask the model what training asked it, never a constant of the day.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from qwenvl import record
from qwenvl.answer import AnswerFormat
from qwenvl.files import StoredSettings

VIDEO_TAG = "<video>"
INSTRUCTION = (
    "This is a 1-second, 30 FPS front-camera driving clip. Predict the ego motion for the "
    "next second: exactly 30 pairs of (velocity in m/s, curvature in 1/m), one per future "
    "frame, as [(v, c), (v, c), ...]. Velocity is negative when reversing; curvature is "
    "positive for a left turn. No prose, just the list."
)


@dataclass(frozen=True)
class PromptSettings(StoredSettings):
    """What the user turn says beside the video."""

    FILE: ClassVar[str] = "prompt.json"
    instruction: str = INSTRUCTION

    def user_text(self) -> str:
        """The user turn's text (the video comes before it)."""
        return self.instruction


def prompt_mismatch(model: PromptSettings | None, data: PromptSettings | None) -> str | None:
    """How the prompt a model was trained on differs from the one a dataset was built with, or
    None when they agree (or one of them is not recorded)."""
    if model is None or data is None or model == data:
        return None
    differing = []
    for name in model.__dataclass_fields__:
        ours, theirs = getattr(model, name), getattr(data, name)
        if ours != theirs:
            long_text = isinstance(ours, str) and max(len(ours), len(theirs)) > 40
            differing.append(f"{name} differs" if long_text else f"{name} {ours!r} vs {theirs!r}")
    return ", ".join(differing)


def dataset_row(row: Mapping, video: str, prompt: PromptSettings, fmt: AnswerFormat) -> dict:
    """One row of the Hugging Face dataset from a manifest row: the chat `messages` (user: the
    video with its fps, then the prompt; assistant: the answer) and the segment's record."""
    fields = record.carried(row)
    answer = fmt.format(list(zip(fields["future_speed"], fields["future_curvature"], strict=True)))
    # Every content item holds every key: Arrow stores the list of items with one schema.
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": video, "fps": fields["fps"], "text": None},
                {"type": "text", "text": prompt.user_text(), "video": None, "fps": None},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": answer, "video": None, "fps": None}],
        },
    ]
    return {
        "id": record.segment_id(fields["clip_id"], fields["segment_index"]),
        **record.carried(fields, record.IDENTITY),
        "video": video,
        **record.carried(fields, record.VIDEO),
        "messages": messages,
        "answer": answer,
        **record.carried(fields, record.LABELS),
    }


def user_text_of_row(row: Mapping) -> str:
    """The prompt text of a dataset row's user turn."""
    return next(item["text"] for item in row["messages"][0]["content"] if item["type"] == "text")


def training_sample(row: Mapping, video: str) -> dict:
    """A dataset row in the training format (the seed guide's, as qwen-vl-finetune reads it):
    {"id", "video", "conversations": [human "<video>\\n<prompt>", gpt answer]} and the record;
    `video` relative to the training file."""
    return {
        "id": row["id"],
        "video": video,
        **record.carried(row, record.VIDEO),
        "conversations": [
            {"from": "human", "value": f"{VIDEO_TAG}\n{user_text_of_row(row)}"},
            {"from": "gpt", "value": row["answer"]},
        ],
        **record.carried(row, record.IDENTITY + record.LABELS),
    }


def user_text_of(sample: Mapping) -> str:
    """The user text of a training sample without its <video> tag."""
    return sample["conversations"][0]["value"].replace(VIDEO_TAG, "").lstrip("\n")


def answer_of(sample: Mapping) -> str:
    return sample["conversations"][1]["value"]


def model_messages(user_text: str, answer: str | None = None) -> list[dict]:
    """What the processor's chat template renders: user = the video then the text; assistant =
    the answer when training (none at inference, where the generation prompt follows)."""
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text}]}
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def sample_messages(sample: Mapping, with_answer: bool) -> list[dict]:
    """The messages of a training-format sample, for training (with its answer) or for answering
    it (evaluation, task metrics): one function, so both show the model the same prompt."""
    return model_messages(user_text_of(sample), answer_of(sample) if with_answer else None)
