"""The answer format written for a million rows at once is, value for value, what Python's own
round-and-format writes, ties and clipping included."""

from __future__ import annotations

import random

import numpy as np
import pytest

from qwenvl.answer import AnswerFormat, format_pairs


def _python_way(pairs, velocity_decimals: int, curvature_decimals: int) -> str:
    """The answer as Python writes it: round(), clip to the widest value, no "-0", format."""

    def written(value: float, decimals: int, digits: int) -> str:
        widest = round(10**digits - 10.0**-decimals, decimals)
        rounded = min(max(round(float(value), decimals), -widest), widest) + 0.0
        return f"{rounded:.{decimals}f}"

    return (
        "["
        + ", ".join(
            f"({written(v, velocity_decimals, 2)}, {written(c, curvature_decimals, 1)})"
            for v, c in pairs
        )
        + "]"
    )


def _hard_values(rng: random.Random, decimals: int, spread: float) -> float:
    kind = rng.random()
    if kind < 0.3:
        return rng.uniform(-spread, spread)
    if kind < 0.6:  # a tie at the decimals, as written in decimal (most are not exact in binary)
        return (rng.randint(-10_000, 10_000) + 0.5) / 10**decimals
    if kind < 0.8:
        return round(rng.uniform(-spread, spread), decimals + 1)
    return rng.choice([0.0, -0.0, -1e-9, 1e9, -1e9, 99.95, -99.95, 9.9995, -9.9995, 2.675, 0.125])


@pytest.mark.parametrize("decimals", [(1, 3), (0, 0), (2, 4), (6, 8), (3, 1)])
def test_many_answers_at_once_equal_python_rounding(decimals):
    rng = random.Random(sum(decimals))
    fmt = AnswerFormat(*decimals)
    rows = [
        [
            (_hard_values(rng, decimals[0], 120), _hard_values(rng, decimals[1], 12))
            for _ in range(30)
        ]
        for _ in range(400)
    ]
    pairs = np.array(rows)
    written = fmt.format_many(pairs[..., 0], pairs[..., 1]).to_pylist()
    assert written == [_python_way(row, *decimals) for row in rows]
    assert format_pairs(rows[0], *decimals) == written[0] == fmt.format(rows[0])
