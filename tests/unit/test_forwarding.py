"""Which erasure of a user took an event of theirs: the first one later than it."""

from __future__ import annotations

from profiling.forwarding import ERASURES_KEPT, Lost, Marker, earlier_erasures, holder_of


def test_an_event_goes_with_the_first_erasure_later_than_it() -> None:
    marker = Marker(300, "c", ((100, "a"), (200, None)))
    assert marker.after(50) == (100, "a")
    assert marker.after(100) == (200, None)  # at the merge's time: after it
    assert marker.after(250) == (300, "c")
    assert marker.after(300) is None  # not older than any: the user's own


def test_an_event_older_than_every_erasure_kept_has_no_known_erasure() -> None:
    """A full history may have lost older erasures: the oldest kept bounds it."""
    full = tuple((100 * (i + 1), f"u{i}") for i in range(ERASURES_KEPT))
    marker = Marker(10_000, None, full)
    assert marker.after(99) is Lost.OLDER_THAN_KEPT
    assert marker.after(100) == (200, "u1")
    assert Marker(10_000, None, full[1:]).after(99) == (200, "u1")  # not full: all of it


def test_an_erase_keeps_the_last_erasures_before_it() -> None:
    assert earlier_erasures(None) == ()
    marker = Marker(0, None)
    for at in range(1, ERASURES_KEPT + 3):
        marker = Marker(at, f"u{at}", earlier_erasures(marker))
    assert marker.earlier == tuple((at, f"u{at}") for at in range(2, ERASURES_KEPT + 2))


def test_routes_place_an_event_by_its_time() -> None:
    routes = ((100, "a"), (300, Lost.ERASED))
    assert [holder_of(routes, ts) for ts in (5, 100, 299, 300)] == [
        "a", Lost.ERASED, Lost.ERASED, Lost.ERASED,
    ]  # fmt: skip
