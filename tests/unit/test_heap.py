"""The garbage collector's settings for the worker's life (`stream.runner.settle_heap`)."""

from __future__ import annotations

import subprocess
import sys

from stream.runner import young_threshold
from stream.settings import Settings

# In a process of its own: freezing the test process's heap would change when the
# garbage of the tests after this one is collected.
SETTLED = """
import gc
from stream.runner import settle_heap
middle, old = gc.get_threshold()[1:]
settle_heap(20_000)
print(gc.get_threshold() == (400_000, middle, old), gc.get_freeze_count() > 0)
"""


def test_young_collections_leave_room_for_the_largest_batch() -> None:
    """A young collection inside a batch walks its live events and frees nothing: the
    threshold grows with the batch setting, above what a batch holds at its peak."""
    assert young_threshold(Settings().batch_max_events) == 100_000
    assert young_threshold(20_000) == 400_000
    assert young_threshold(1) == 100_000
    done = subprocess.run(
        [sys.executable, "-c", SETTLED], capture_output=True, text=True, check=True, timeout=60
    )
    # The threshold set, and start-up's objects hidden from collections (frozen).
    assert done.stdout.split() == ["True", "True"]


SETTLED_HUGE = """
import gc
from stream.runner import settle_heap
settle_heap(200_000_000)
print(gc.get_threshold()[0])
"""


def test_a_batch_setting_past_a_c_int_of_objects_still_starts_the_worker() -> None:
    """PROFILER_BATCH_MAX_EVENTS=200000000 is accepted; 20 objects per event overflowed
    `gc.set_threshold` (a C int) and the worker died with a traceback after it started."""
    assert young_threshold(200_000_000) == 2**31 - 1
    done = subprocess.run(
        [sys.executable, "-c", SETTLED_HUGE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(2**31 - 1)]
