"""`round(x, 6)` for the hot path: the same float, at about half the instructions.

Python's `round(x, 6)` writes `x` out in decimal to six places (round half to
even, on the exact binary value), formats that as a string and reads it back:
about 3,200 instructions, several times per user and batch (spend, category
scores, risk). For the values those mostly take (positive floats under 4,000),
the decimal to six places is the integer nearest to `x * 1e6`, and the float it
reads back as is that integer divided by 1e6 (IEEE division rounds correctly,
as the string's reading does). The product is within 2**-20 of the exact one
below 4e9, so unless it lies within 1e-5 of a half (where the product's error
could pick the wrong integer, or where a tie needs round half to even), its
nearest integer is the exact one's. Everything else goes to `round` itself.

The nearest integer comes from float arithmetic alone, no call: adding
`_ROUNDER` (1.5 * 2**52) puts the sum where floats are spaced exactly 1 apart,
so the addition rounds the product to an integer (half to even: `_ROUNDER` is
even), and subtracting it again is exact. The distance from the product to
that integer is exact too (Sterbenz), and under 0.49999 exactly when the
product is not within 1e-5 of a half.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeVar

K = TypeVar("K")

_ROUNDER: Final = 6755399441055744.0  # 1.5 * 2**52: x + it - it is x's nearest integer


def round6(x: float) -> float:
    """`round(x, 6)`, the same float (tests compare the two)."""
    scaled = x * 1e6
    if 0.0 < scaled < 4e9 and type(x) is float:  # round() keeps an int an int
        nearest = (scaled + _ROUNDER) - _ROUNDER
        if -0.49999 < scaled - nearest < 0.49999:  # not within 1e-5 of a half
            return nearest / 1e6
    return round(x, 6)


def round6_positive(pairs: Iterable[tuple[K, float]]) -> list[tuple[K, float]]:
    """`(key, round6(value))` of each pair whose value is above 0, in order.

    For a profile's top categories, on every write that changed them: `round6`
    written out in the loop, as a call per value cost them about a fifth more.
    Keep the two in step (tests compare this with `round` too).
    """
    rounded = []
    for key, value in pairs:
        scaled = value * 1e6
        if 0.0 < scaled < 4e9 and type(value) is float:  # as in `round6`
            nearest = (scaled + _ROUNDER) - _ROUNDER
            if -0.49999 < scaled - nearest < 0.49999:
                rounded.append((key, nearest / 1e6))
                continue
        if value > 0:
            rounded.append((key, round(value, 6)))
    return rounded
