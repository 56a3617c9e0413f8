"""`round6` gives the float `round(x, 6)` gives, its type and sign included."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from profiling.rounding import round6, round6_positive


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


@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.floats(min_value=0.0, max_value=5_000.0),
            st.integers(-10, 10),
        )
    )
)
def test_positive_ones_of_a_list(values: list[float]) -> None:
    pairs = list(enumerate(values))
    fast = round6_positive(pairs)
    slow = [(key, round(value, 6)) for key, value in pairs if value > 0]
    assert repr(fast) == repr(slow)
    assert [type(value) for _, value in fast] == [type(value) for _, value in slow]


def test_positive_ones_near_halves() -> None:
    rng = random.Random(7)
    values = [0.0, -0.0, -1.5, math.nan, math.inf, 5e-324, 4e3, 7]
    for k in (rng.randrange(1, 4_000_000_000) for _ in range(20_000)):
        x = (k + 0.5) / 1e6
        values += (x, math.nextafter(x, 0.0), math.nextafter(x, math.inf), k / 1e6)
    pairs = [(str(i), value) for i, value in enumerate(values)]
    expected = [(key, round(value, 6)) for key, value in pairs if value > 0]
    assert repr(round6_positive(pairs)) == repr(expected)
