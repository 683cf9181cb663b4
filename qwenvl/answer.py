"""The answer format: 30 (forward speed m/s, curvature 1/m) pairs as text, its strict parser and
its grammar, all from the same settings."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from qwenvl.files import StoredSettings

NUM_PAIRS = 30
CLIP_FPS = 30
# Integer digits an answer holds: |velocity| < 100 m/s, |curvature| < 10 1/m. Driving data
# stays far inside (about 40 m/s; curvature mostly under 0.2 1/m, a 5 m turning radius); a
# value beyond is written as the widest value of its sign (99.9, -9.999 at 1/3 decimals), so
# every answer, label or prediction, stays within the grammar.
VELOCITY_DIGITS = 2
CURVATURE_DIGITS = 1

# A decimal number as the answers write it: optional minus, digits, optional fraction. Looser
# than the grammar (any decimals, leading zeros) so free decoding is judged on its numbers.
_NUMBER = r"-?\d+(?:\.\d+)?"
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
        v = _rounded_within(velocity, velocity_decimals, VELOCITY_DIGITS)
        c = _rounded_within(curvature, curvature_decimals, CURVATURE_DIGITS)
        parts.append(f"({v:.{velocity_decimals}f}, {c:.{curvature_decimals}f})")
    return "[" + ", ".join(parts) + "]"


def _rounded_within(value: float, decimals: int, digits: int) -> float:
    """`value` rounded to `decimals`, clipped to the widest number of `digits` integer digits."""
    widest = round(10**digits - 10.0**-decimals, decimals)
    return min(max(round(float(value), decimals), -widest), widest) + 0.0  # -0.0 -> 0.0


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
class AnswerFormat(StoredSettings):
    """How answers are written: decimals of velocity and curvature. Stored with the dataset
    (answer_format.json beside train.json) and with every checkpoint trained on it."""

    FILE: ClassVar[str] = "answer_format.json"
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
        """The longest answer text this format writes (and its grammar accepts)."""
        return self.format([(-1e9, -1e9)] * NUM_PAIRS)  # clipped to the widest values

    def grammar(self) -> str:
        """EBNF (as xgrammar reads it) of exactly the answers this format writes: 30 pairs,
        the decimals of the format, an optional minus, no leading zeros. The strict parser
        parses every string it accepts."""

        def number(digits: int, decimals: int) -> str:
            integer = "[0-9]" if digits == 1 else f'("0" | [1-9] [0-9]{{0,{digits - 1}}})'
            fraction = f' "." [0-9]{{{decimals}}}' if decimals else ""
            return f'"-"? {integer}{fraction}'

        return "\n".join(
            [
                f'root ::= "[" pair (", " pair){{{NUM_PAIRS - 1}}} "]"',
                'pair ::= "(" velocity ", " curvature ")"',
                f"velocity ::= {number(VELOCITY_DIGITS, self.velocity_decimals)}",
                f"curvature ::= {number(CURVATURE_DIGITS, self.curvature_decimals)}",
            ]
        )
