"""`round(x, 6)` for the hot path: the same float, at two thirds of the instructions.

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
"""

from __future__ import annotations

import math
from typing import Final

_floor: Final = math.floor


def round6(x: float) -> float:
    """`round(x, 6)`, the same float (tests compare the two)."""
    scaled = x * 1e6
    if 0.0 < scaled < 4e9 and type(x) is float:  # round() keeps an int an int
        whole = _floor(scaled)
        fraction = scaled - whole  # exact: both below 2**53
        if fraction < 0.49999:
            return whole / 1e6
        if fraction > 0.50001:
            return (whole + 1) / 1e6
    return round(x, 6)
