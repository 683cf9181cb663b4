"""The prompt, and every chat shape built from it: the dataset row, the training sample, and the
messages the model is shown in training and at inference.

The prompt is stored as prompt.json with the dataset and with every checkpoint trained on it;
evaluation and prediction ask the model what training asked it, never a constant of the day.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    """What the user turn says beside the video: the instruction and, when the dataset asks for
    one (--ego-history), the car's motion over the past seconds."""

    FILE: ClassVar[str] = "prompt.json"
    instruction: str = INSTRUCTION
    ego_history_seconds: float = 0.0
    """Seconds of ego history in the prompt (0: the video alone, the seed guide's task)."""
    history_hz: float = 10.0
    """Its rate: (speed, curvature) pairs per second."""

    def __post_init__(self) -> None:
        if not self.ego_history_seconds >= 0 or not self.history_hz > 0:
            raise ValueError(
                f"ego history of {self.ego_history_seconds} s at {self.history_hz} Hz: need "
                "seconds >= 0 and a positive rate"
            )
        if self.ego_history_seconds and not self.history_pairs:
            raise ValueError(f"{self.ego_history_seconds} s at {self.history_hz} Hz is no pair")

    @property
    def history_pairs(self) -> int:
        """Pairs of ego history each prompt holds (0 without)."""
        return round(self.ego_history_seconds * self.history_hz)

    def user_texts(
        self,
        count: int,
        speed: np.ndarray | None = None,
        curvature: np.ndarray | None = None,
        fmt: AnswerFormat | None = None,
    ) -> pa.Array:
        """The user turns' texts (the video comes before each) of `count` clips; with an ego
        history, `speed` and `curvature` (count, history_pairs) hold it, oldest first, written
        in the answer format's decimals."""
        if not self.history_pairs:
            return pa.array([self.instruction] * count, pa.string())
        speed, curvature = np.asarray(speed, np.float64), np.asarray(curvature, np.float64)
        if speed.shape != (count, self.history_pairs) or curvature.shape != speed.shape:
            raise ValueError(
                f"the prompt holds {self.history_pairs} pairs of ego history "
                f"({self.ego_history_seconds:g} s at {self.history_hz:g} Hz), not "
                f"{speed.shape[-1] if speed.ndim == 2 else 'these'}"
            )
        pairs = (fmt or AnswerFormat()).format_many(speed, curvature)
        lead = (
            f"{self.instruction} The ego motion of the past {self.ego_history_seconds:g} s at "
            f"{self.history_hz:g} Hz, oldest first, the last one now: "
        )
        return pc.binary_join_element_wise(lead, pairs, "")

    def user_text(self, history=None, fmt: AnswerFormat | None = None) -> str:
        """The user turn's text of one clip; `history` its (history_pairs, 2) ego history."""
        if history is None:
            return self.user_texts(1, fmt=fmt)[0].as_py()
        pairs = np.asarray(history, np.float64).reshape(1, -1, 2)
        return self.user_texts(1, pairs[..., 0], pairs[..., 1], fmt)[0].as_py()


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


_ITEM = pa.struct(
    [("type", pa.string()), ("video", pa.string()), ("fps", pa.float64()), ("text", pa.string())]
)
_TURN = pa.struct([("from", pa.string()), ("value", pa.string())])
# A dataset row: the chat `messages` (user: the video with its fps, then the prompt; assistant:
# the answer; every content item holds every key, as Arrow stores one schema) and the record.
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        *record.arrow_fields(record.IDENTITY),
        ("video", pa.string()),
        *record.arrow_fields(record.VIDEO),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(_ITEM))]))),
        ("answer", pa.string()),
        *record.arrow_fields(record.LABELS + record.HISTORY),
    ]
)
# A training sample: the seed guide's {"id", "video", "conversations"} and the record.
SAMPLE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("video", pa.string()),
        *record.arrow_fields(record.VIDEO),
        ("conversations", pa.list_(_TURN)),
        *record.arrow_fields(record.IDENTITY + record.LABELS + record.HISTORY),
    ]
)


def _interleave(n: int, *columns: pa.Array) -> pa.Array:
    """Item k of row i from columns[k][i], rows one after the other (columns of length n)."""
    indices = (np.arange(n)[:, None] + n * np.arange(len(columns))[None, :]).ravel()
    return pc.take(pa.concat_arrays(list(columns)), pa.array(indices))


def _lists(flat: pa.Array, sizes: list[int], n: int) -> pa.Array:
    """Rows of `flat` grouped into lists: each row's lists of the given sizes, n rows."""
    lengths = np.tile(np.array(sizes, dtype=np.int32), n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(offsets, flat)


def _label_matrix(records: pa.Table, name: str) -> np.ndarray:
    values = pc.list_flatten(records[name].combine_chunks())
    return values.to_numpy(zero_copy_only=False).reshape(records.num_rows, -1)


def dataset_table(
    records: pa.Table, videos: pa.Array, prompt: PromptSettings, fmt: AnswerFormat
) -> pa.Table:
    """Dataset rows (ROW_SCHEMA) of many segments at once: `records` holds their record's
    columns, `videos` their video paths."""
    n = records.num_rows
    answers = fmt.format_many(
        _label_matrix(records, "future_speed"), _label_matrix(records, "future_curvature")
    )
    history = (
        (_label_matrix(records, "history_speed"), _label_matrix(records, "history_curvature"))
        if prompt.history_pairs
        else (None, None)
    )
    users = prompt.user_texts(n, *history, fmt)
    nulls = pa.nulls(n, pa.string())
    fps = records["fps"].combine_chunks()
    items = pa.StructArray.from_arrays(
        [
            _interleave(n, pa.array(["video"] * n), pa.array(["text"] * n), pa.array(["text"] * n)),
            _interleave(n, videos, nulls, nulls),
            _interleave(n, fps, pa.nulls(n, pa.float64()), pa.nulls(n, pa.float64())),
            _interleave(n, nulls, users, answers),
        ],
        fields=list(_ITEM),
    )
    roles = _interleave(n, pa.array(["user"] * n), pa.array(["assistant"] * n))
    turns = pa.StructArray.from_arrays(
        [roles, _lists(items, [2, 1], n)], fields=list(ROW_SCHEMA.field("messages").type.value_type)
    )
    segment = pc.utf8_lpad(pc.cast(records["segment_index"], pa.string()), width=2, padding="0")
    columns = {
        "id": pc.binary_join_element_wise(records["clip_id"], segment, "_seg"),
        "video": videos,
        "messages": _lists(turns, [2], n),
        "answer": answers,
        **{f.name: records[f.name] for f in record.FIELDS},
    }
    return pa.table([columns[name] for name in ROW_SCHEMA.names], schema=ROW_SCHEMA)


def _record_table(row: Mapping) -> pa.Table:
    return pa.Table.from_pylist(
        [record.carried(row)], schema=pa.schema(record.arrow_fields(record.FIELDS))
    )


def dataset_row(row: Mapping, video: str, prompt: PromptSettings, fmt: AnswerFormat) -> dict:
    """One dataset row (see dataset_table) from a manifest row and its video's path."""
    return dataset_table(_record_table(row), pa.array([video]), prompt, fmt).to_pylist()[0]


def user_texts_of_rows(rows: pa.Table) -> pa.Array:
    """The prompt texts of dataset rows' user turns (the first text item of the first turn)."""
    turns = pc.list_flatten(rows["messages"].combine_chunks())
    user_turns = pc.take(turns, pa.array(np.arange(0, len(turns), 2)))
    items = pc.list_flatten(pc.struct_field(user_turns, "content"))
    sizes = pc.list_value_length(pc.struct_field(user_turns, "content")).to_numpy()
    text_index = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    is_text = pc.equal(pc.struct_field(items, "type"), "text").to_numpy(zero_copy_only=False)
    if (sizes == 2).all() and not is_text[0::2].any() and is_text[1::2].all():
        # The shape dataset_table writes: the video, then the text.
        return pc.take(pc.struct_field(items, "text"), pa.array(text_index + 1))
    # Any other shape: the first position from each turn's start that is text.
    first = []
    for start, size in zip(text_index, sizes, strict=True):
        hits = np.flatnonzero(is_text[start : start + size])
        first.append(start + hits[0] if len(hits) else -1)
    if min(first, default=0) < 0:
        raise ValueError("a dataset row's user turn holds no text")
    return pc.take(pc.struct_field(items, "text"), pa.array(first))


def training_table(rows: pa.Table, videos: pa.Array) -> pa.Table:
    """Training samples (SAMPLE_SCHEMA) of many dataset rows at once, `videos` their video
    paths relative to the training file."""
    n = rows.num_rows
    human = pc.binary_join_element_wise(f"{VIDEO_TAG}\n", user_texts_of_rows(rows), "")
    turns = pa.StructArray.from_arrays(
        [
            _interleave(n, pa.array(["human"] * n), pa.array(["gpt"] * n)),
            _interleave(n, human, rows["answer"].combine_chunks()),
        ],
        fields=list(_TURN),
    )
    columns = {
        "id": rows["id"],
        "video": videos,
        "conversations": _lists(turns, [2], n),
        **{f.name: rows[f.name] for f in record.FIELDS},
    }
    return pa.table([columns[name] for name in SAMPLE_SCHEMA.names], schema=SAMPLE_SCHEMA)


def training_sample(row: Mapping, video: str) -> dict:
    """One dataset row in the training format (see training_table), `video` relative to the
    training file."""
    table = pa.Table.from_pylist([dict(row)], schema=ROW_SCHEMA)
    return training_table(table, pa.array([video])).to_pylist()[0]


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
