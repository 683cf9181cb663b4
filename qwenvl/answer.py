"""The prompt and the answer format: 30 (forward speed m/s, curvature 1/m) pairs as text."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

NUM_PAIRS = 30
CLIP_FPS = 30
FORMAT_FILE = "answer_format.json"
# Widest values an answer is budgeted for: |velocity| < 100 m/s, |curvature| < 10 1/m (a
# 0.1 m turning radius; real curvature stays well inside).
_WIDEST_VELOCITY_DIGITS = 2
_WIDEST_CURVATURE_DIGITS = 1

PROMPT = (
    "This is a 1-second, 30 FPS front-camera driving clip. Predict the ego motion for the "
    "next second: exactly 30 pairs of (velocity in m/s, curvature in 1/m), one per future "
    "frame, as [(v, c), (v, c), ...]. Velocity is negative when reversing; curvature is "
    "positive for a left turn. No prose, just the list."
)

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PAIR = re.compile(rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)")
_LIST = re.compile(rf"\[\s*{_PAIR.pattern}(?:\s*,\s*{_PAIR.pattern})*\s*\]")


class AnswerParseError(ValueError):
    """The text is not exactly 30 finite (velocity, curvature) pairs; str() says why."""


def format_pairs(
    pairs: Sequence[Sequence[float]], velocity_decimals: int = 1, curvature_decimals: int = 3
) -> str:
    """Render pairs as the answer text, e.g. '[(12.3, 0.004), (12.4, -0.002)]'."""
    parts = []
    for velocity, curvature in pairs:
        v = round(float(velocity), velocity_decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
        c = round(float(curvature), curvature_decimals) + 0.0
        parts.append(f"({v:.{velocity_decimals}f}, {c:.{curvature_decimals}f})")
    return "[" + ", ".join(parts) + "]"


def parse_pairs(text: str, expected: int = NUM_PAIRS) -> list[tuple[float, float]]:
    """Parse answer text strictly: one list, nothing around it, exactly `expected` finite pairs."""
    stripped = text.strip()
    if not stripped:
        raise AnswerParseError("empty answer")
    if not stripped.startswith("[") or not stripped.endswith("]"):
        raise AnswerParseError("text around the list")
    if _LIST.fullmatch(stripped) is None:
        if re.search(r"nan|inf", stripped, re.IGNORECASE):
            raise AnswerParseError("non-finite number")
        raise AnswerParseError("not a list of (number, number) pairs")
    pairs = [(float(v), float(c)) for v, c in _PAIR.findall(stripped)]
    if len(pairs) != expected:
        raise AnswerParseError(f"{len(pairs)} pairs, expected {expected}")
    if not all(math.isfinite(v) and math.isfinite(c) for v, c in pairs):
        raise AnswerParseError("non-finite number")
    return pairs


@dataclass(frozen=True)
class AnswerFormat:
    """How answers are written: decimals of velocity and curvature. Stored with the dataset
    (answer_format.json beside train.json) and with every checkpoint trained on it."""

    velocity_decimals: int = 1
    curvature_decimals: int = 3

    def __post_init__(self) -> None:
        if not (0 <= self.velocity_decimals <= 6 and 0 <= self.curvature_decimals <= 8):
            raise ValueError(
                "answer decimals out of range: velocity 0..6, curvature 0..8, got "
                f"{self.velocity_decimals}, {self.curvature_decimals}"
            )

    def format(self, pairs: Sequence[Sequence[float]]) -> str:
        return format_pairs(pairs, self.velocity_decimals, self.curvature_decimals)

    def widest_answer(self) -> str:
        """The longest answer text this format writes for values within the budgeted range."""
        velocity = -(10**_WIDEST_VELOCITY_DIGITS - 10.0**-self.velocity_decimals)
        curvature = -(10**_WIDEST_CURVATURE_DIGITS - 10.0**-self.curvature_decimals)
        return self.format([(velocity, curvature)] * NUM_PAIRS)

    def save(self, directory: str | Path) -> None:
        (Path(directory) / FORMAT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> AnswerFormat | None:
        """The format stored in a dataset or checkpoint directory, or None when there is none."""
        path = Path(directory) / FORMAT_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a valid answer format ({err})") from None
