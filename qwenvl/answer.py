"""The answer format: 30 (forward speed m/s, curvature 1/m) pairs as text, its strict parser and
its grammar, all from the same settings."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qwenvl.files import StoredSettings
from qwenvl.task import HORIZON_PAIRS

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
    pairs = np.asarray(pairs, dtype=np.float64).reshape(1, -1, 2)
    texts = format_many(pairs[..., 0], pairs[..., 1], velocity_decimals, curvature_decimals)
    return texts[0].as_py()


def format_many(
    speed: np.ndarray, curvature: np.ndarray, velocity_decimals: int, curvature_decimals: int
):
    """The answer texts of many rows at once, (N, K) speeds and curvatures -> N strings (an
    Arrow array): the dataset steps write a million answers this way in seconds.

    Each value is rounded to its decimals as Python's round() does (half-even on the exact
    binary value), clipped to the widest value of its integer digits, and written without a
    "-0".
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    speed = np.asarray(speed, dtype=np.float64)
    rows, count = speed.shape
    v = _decimal_strings(speed, velocity_decimals, VELOCITY_DIGITS)
    c = _decimal_strings(
        np.asarray(curvature, dtype=np.float64), curvature_decimals, CURVATURE_DIGITS
    )
    pairs = pc.binary_join_element_wise("(", v, ", ", c, ")", "")
    lists = pa.ListArray.from_arrays(np.arange(0, rows * count + 1, count, dtype=np.int32), pairs)
    return pc.binary_join_element_wise("[", pc.binary_join(lists, ", "), "]", "")


def _decimal_strings(values: np.ndarray, decimals: int, digits: int):
    """Every value as the answers write it (see format_many), flat, as an Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    x = values.ravel()
    scaled = x * 10.0**decimals
    units = np.rint(scaled)
    # Rounding the scaled float is Python's round() except where the scaled value lies within
    # its float error of a tie; those few are rounded by Python itself.
    tie = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) <= 1e-12 + 1e-15 * np.abs(scaled)
    for i in np.flatnonzero(tie):
        units[i] = round(round(float(x[i]), decimals) * 10**decimals)
    widest = 10 ** (digits + decimals) - 1
    units = np.clip(units, -widest, widest).astype(np.int64)
    text = pc.cast(pa.array(np.abs(units)), pa.string())
    if decimals:
        text = pc.utf8_lpad(text, width=decimals + 1, padding="0")
        whole = pc.utf8_slice_codeunits(text, 0, -decimals)
        text = pc.binary_join_element_wise(whole, pc.utf8_slice_codeunits(text, -decimals), ".")
    return pc.binary_join_element_wise(pc.if_else(pa.array(units < 0), "-", ""), text, "")


def parse_pairs(text: str, expected: int = HORIZON_PAIRS) -> list[tuple[float, float]]:
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

    def format_many(self, speed: np.ndarray, curvature: np.ndarray):
        """The answers of many rows at once (see format_many)."""
        return format_many(speed, curvature, self.velocity_decimals, self.curvature_decimals)

    def widest_answer(self) -> str:
        """The longest answer text this format writes (and its grammar accepts)."""
        return self.format([(-1e9, -1e9)] * HORIZON_PAIRS)  # clipped to the widest values

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
                f'root ::= "[" pair (", " pair){{{HORIZON_PAIRS - 1}}} "]"',
                'pair ::= "(" velocity ", " curvature ")"',
                f"velocity ::= {number(VELOCITY_DIGITS, self.velocity_decimals)}",
                f"curvature ::= {number(CURVATURE_DIGITS, self.curvature_decimals)}",
            ]
        )
