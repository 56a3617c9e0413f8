"""The import's reading thread and the event loop that sends what it reads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

import stream.producing
from stream.file_import import Record
from stream.producing import ReadAside


async def test_a_cancel_that_comes_as_records_arrive_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C cancels the import's task; the thread hands records over by setting an
    event, often. A cancel in the same turn as that event was dropped (Python 3.11's
    `wait_for` returned the wait's result instead), and the import ran on."""
    monkeypatch.setattr(stream.producing, "LOOK_S", 60.0)  # no timeout turn in between
    release = threading.Event()

    def blocked() -> Iterator[Record]:
        release.wait(10)  # a pipe nobody writes to yet
        yield from ()

    reader = ReadAside(blocked)

    async def take() -> None:
        async for _ in reader:
            pass

    task = asyncio.create_task(take())
    try:
        for _ in range(5):  # the task reaches its wait for the thread
            await asyncio.sleep(0)
        reader._arrived.set()  # the thread's hand-over ...
        task.cancel()  # ... and Ctrl-C, in one turn of the loop
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    finally:
        release.set()
