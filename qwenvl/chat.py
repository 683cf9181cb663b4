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
# The instruction when the prompt shows several cameras, each clip labelled with its camera.
CAMERAS_INSTRUCTION = (
    "These are 1-second, 30 FPS driving clips of the same moment from the car's cameras named "
    "above, the first looking ahead. Predict the ego motion for the next second: exactly 30 "
    "pairs of (velocity in m/s, curvature in 1/m), one per future frame, as [(v, c), (v, c), "
    "...]. Velocity is negative when reversing; curvature is positive for a left turn. No "
    "prose, just the list."
)


def view_label(camera: str) -> str:
    """The text before a camera's clip in a prompt of several cameras: its dataset name."""
    return f"{camera}:"


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
    cameras: tuple[str, ...] = ()
    """The cameras whose clips the prompt shows, each after its label, the segments' own first;
    empty: that camera's clip alone, unlabelled (the seed guide's task)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))  # a list when read from JSON
        if self.cameras and self.instruction == INSTRUCTION:  # the wording for several cameras
            object.__setattr__(self, "instruction", CAMERAS_INSTRUCTION)
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

    def human(self, user_text: str, cameras: tuple[str, ...] | None = None) -> str:
        """The user turn: a <video> tag where each clip goes, then the text. With cameras, each
        clip after its label, for the `cameras` a sample has (default: all the prompt's)."""
        if not self.cameras:
            return f"{VIDEO_TAG}\n{user_text}"
        shown = self.cameras if cameras is None else cameras
        return "\n".join([*(f"{view_label(c)}\n{VIDEO_TAG}" for c in shown), user_text])

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
        *record.arrow_fields(record.VIDEO + record.VIEWS),
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
        *record.arrow_fields(record.VIDEO + record.VIEWS),
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
    if prompt.cameras:
        items, sizes = _view_items(records, videos, users, answers)
    else:
        items, sizes = _video_then_text(records, videos, users, answers), [2, 1] * n
    roles = _interleave(n, pa.array(["user"] * n), pa.array(["assistant"] * n))
    turns = pa.StructArray.from_arrays(
        [roles, _sized_lists(items, sizes)],
        fields=list(ROW_SCHEMA.field("messages").type.value_type),
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


def _sized_lists(flat: pa.Array, sizes: list[int]) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return pa.ListArray.from_arrays(offsets, flat)


def _video_then_text(records: pa.Table, videos: pa.Array, users: pa.Array, answers: pa.Array):
    """The items of one camera's rows, in columns: user = its video then the text; assistant =
    the answer."""
    n = records.num_rows
    nulls = pa.nulls(n, pa.string())
    fps = records["fps"].combine_chunks()
    return pa.StructArray.from_arrays(
        [
            _interleave(n, pa.array(["video"] * n), pa.array(["text"] * n), pa.array(["text"] * n)),
            _interleave(n, videos, nulls, nulls),
            _interleave(n, fps, pa.nulls(n, pa.float64()), pa.nulls(n, pa.float64())),
            _interleave(n, nulls, users, answers),
        ],
        fields=list(_ITEM),
    )


def _view_items(records: pa.Table, videos: pa.Array, users: pa.Array, answers: pa.Array):
    """The items of rows of several cameras: user = each view's label and clip, then the text;
    assistant = the answer. Views differ in number where a clip lacked a camera, so the items
    are listed row by row (a Python object per row: several-camera datasets only)."""
    items, sizes = [], []
    rows = zip(
        videos.to_pylist(), records["fps"].to_pylist(), records["cameras"].to_pylist(),
        records["extra_videos"].to_pylist(), records["extra_fps"].to_pylist(),
        users.to_pylist(), answers.to_pylist(), strict=True,
    )  # fmt: skip
    for video, fps, cameras, extra_videos, extra_fps, user, answer in rows:
        clips = [(video, fps), *zip(extra_videos, extra_fps, strict=True)]
        for camera, (path, rate) in zip(cameras, clips, strict=True):
            items.append({"type": "text", "video": None, "fps": None, "text": view_label(camera)})
            items.append({"type": "video", "video": path, "fps": rate, "text": None})
        items.append({"type": "text", "video": None, "fps": None, "text": user})
        items.append({"type": "text", "video": None, "fps": None, "text": answer})
        sizes += [2 * len(clips) + 1, 1]
    return pa.array(items, _ITEM), sizes


def _record_table(row: Mapping) -> pa.Table:
    return pa.Table.from_pylist(
        [record.carried(row)], schema=pa.schema(record.arrow_fields(record.FIELDS))
    )


def dataset_row(row: Mapping, video: str, prompt: PromptSettings, fmt: AnswerFormat) -> dict:
    """One dataset row (see dataset_table) from a manifest row and its video's path."""
    return dataset_table(_record_table(row), pa.array([video]), prompt, fmt).to_pylist()[0]


def humans_of_rows(rows: pa.Table) -> pa.Array:
    """The user turns of dataset rows as training files write them: each item on a line, a
    <video> tag for a clip (for one camera: "<video>\n" and the prompt, the seed guide's)."""
    turns = pc.list_flatten(rows["messages"].combine_chunks())
    user_turns = pc.take(turns, pa.array(np.arange(0, len(turns), 2)))
    contents = pc.struct_field(user_turns, "content")
    items = pc.list_flatten(contents)
    is_video = pc.equal(pc.struct_field(items, "type"), "video")
    texts = pc.if_else(is_video, VIDEO_TAG, pc.struct_field(items, "text"))
    if pc.any(pc.is_null(texts)).as_py():
        raise ValueError("a dataset row's user turn holds an item without text")
    sizes = pc.list_value_length(contents).to_numpy()
    return pc.binary_join(_sized_lists(texts, sizes), "\n")


def training_table(rows: pa.Table, videos: pa.Array) -> pa.Table:
    """Training samples (SAMPLE_SCHEMA) of many dataset rows at once, `videos` their video
    paths relative to the training file (and the rows' extra_videos already so)."""
    n = rows.num_rows
    turns = pa.StructArray.from_arrays(
        [
            _interleave(n, pa.array(["human"] * n), pa.array(["gpt"] * n)),
            _interleave(n, humans_of_rows(rows), rows["answer"].combine_chunks()),
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


def human_of(sample: Mapping) -> str:
    """A training sample's user turn, its <video> tags included."""
    return sample["conversations"][0]["value"]


def user_text_of(sample: Mapping) -> str:
    """The text of a training sample's user turn after its clips (the prompt, for one camera)."""
    return split_human(human_of(sample))[-1]


def answer_of(sample: Mapping) -> str:
    return sample["conversations"][1]["value"]


def split_human(human: str) -> list[str]:
    """The texts around a user turn's <video> tags (one more than the tags), each without the
    line break that joins it to a tag."""
    parts = human.split(VIDEO_TAG)
    for i in range(len(parts)):
        if i > 0:
            parts[i] = parts[i].removeprefix("\n")
        if i < len(parts) - 1:
            parts[i] = parts[i].removesuffix("\n")
    return parts


def chat_messages(human: str, answer: str | None = None) -> list[dict]:
    """What the processor's chat template renders: user = the turn's texts and clips in order
    (a clip for each <video> tag); assistant = the answer when training (none at inference,
    where the generation prompt follows)."""
    content = []
    parts = split_human(human)
    for i, text in enumerate(parts):
        if text:
            content.append({"type": "text", "text": text})
        if i < len(parts) - 1:
            content.append({"type": "video"})
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def model_messages(user_text: str, answer: str | None = None) -> list[dict]:
    """The messages of one camera's clip and its user text (see chat_messages)."""
    return chat_messages(f"{VIDEO_TAG}\n{user_text}", answer)


def sample_messages(sample: Mapping, with_answer: bool) -> list[dict]:
    """The messages of a training-format sample, for training (with its answer) or for answering
    it (evaluation, task metrics): one function, so both show the model the same prompt."""
    return chat_messages(human_of(sample), answer_of(sample) if with_answer else None)
