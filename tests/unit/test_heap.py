"""The garbage collector's settings for the worker's life (`stream.runner.settle_heap`)."""

from __future__ import annotations

import gc

from stream.runner import settle_heap, young_threshold
from stream.settings import Settings


def test_young_collections_leave_room_for_the_largest_batch() -> None:
    """A young collection inside a batch walks its live events and frees nothing: the
    threshold grows with the batch setting, above what a batch holds at its peak."""
    assert young_threshold(Settings().batch_max_events) == 100_000
    assert young_threshold(20_000) == 400_000
    assert young_threshold(1) == 100_000
    before = gc.get_threshold()
    try:
        settle_heap(20_000)
        assert gc.get_threshold() == (400_000, *before[1:])
        assert gc.get_freeze_count() > 0  # start-up's objects hidden from collections
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
