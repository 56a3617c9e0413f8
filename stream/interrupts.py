"""The commands' event loops: a Ctrl-C ends each as KeyboardInterrupt, wherever it lands."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, where a Ctrl-C always ends it as KeyboardInterrupt.

    asyncio.run's SIGINT handler cancels the main task, and the run turns that
    cancellation into KeyboardInterrupt by a count of interrupts that it zeroes after
    installing the handler. A signal handled between the two (a script that signals the
    process as soon as it prints) cancels the task before its first step and the run
    ends with a bare CancelledError, a traceback. Nothing else cancels a command's main
    task, so a CancelledError out of the run is that Ctrl-C.
    """
    try:
        return asyncio.run(main)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
