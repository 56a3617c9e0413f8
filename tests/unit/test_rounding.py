"""`round6` gives the float `round(x, 6)` gives, its type and sign included."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from profiling.rounding import round6


def same(x: float) -> bool:
    fast, slow = round6(x), round(x, 6)
    return type(fast) is type(slow) and fast == slow and repr(fast) == repr(slow)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_float(x: float) -> None:
    assert same(x)


@given(st.floats(min_value=0.0, max_value=5_000.0))
def test_the_fast_range(x: float) -> None:
    assert same(x)


def test_halves_and_their_neighbours() -> None:
    rng = random.Random(6)
    for k in [*range(1, 2_000), *(rng.randrange(1, 4_000_000_000) for _ in range(20_000))]:
        for x in ((k + 0.5) / 1e6, k / 1e6, k / 128, k / 1024):
            assert same(x), x
            assert same(math.nextafter(x, 0.0)), x
            assert same(math.nextafter(x, math.inf)), x


def test_ints_zeros_and_the_rest() -> None:
    for x in (0, 5, -3, 0.0, -0.0, 1e-9, -1e-9, 4e3, 1e300, math.inf, -math.inf, 5e-324):
        assert same(x), x
    assert math.isnan(round6(math.nan))
