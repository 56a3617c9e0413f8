"""A Ctrl-C that lands as asyncio.run installs its handler ends a command as any other."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stream.interrupts import run_main


@contextlib.contextmanager
def interrupt_as_asyncio_run_installs_its_handler(
    armed: Callable[[], bool] = lambda: True,
) -> Iterator[None]:
    """A Ctrl-C handled right after asyncio.run puts its SIGINT handler in place, before
    the run zeroes its count of interrupts (the window a script's signal fell into): once,
    at the first run that starts once `armed()`. SIGINT has Python's default handler
    meanwhile, which asyncio.run replaces only when it finds it."""
    real = signal.signal
    interrupted: list[bool] = []

    def install_then_interrupt(signum: int, handler: Callable[..., Any] | int) -> Any:
        previous = real(signum, handler)
        the_runs = callable(handler) and handler is not signal.default_int_handler
        if signum == signal.SIGINT and the_runs and not interrupted and armed():
            interrupted.append(True)
            handler(signal.SIGINT, None)
        return previous

    before = real(signal.SIGINT, signal.default_int_handler)
    signal.signal = install_then_interrupt
    try:
        yield
    finally:
        signal.signal = real
        real(signal.SIGINT, before)


@pytest.fixture
def ctrl_c_as_the_run_installs_its_handler() -> Iterator[None]:
    with interrupt_as_asyncio_run_installs_its_handler():
        yield


@pytest.mark.usefixtures("ctrl_c_as_the_run_installs_its_handler")
def test_a_ctrl_c_before_the_main_task_starts_is_keyboard_interrupt() -> None:
    """asyncio.run alone ends with a bare CancelledError: a traceback for a Ctrl-C."""
    steps: list[str] = []

    async def main() -> None:
        steps.append("started")

    with pytest.raises(KeyboardInterrupt):
        run_main(main())
    assert steps == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_main_task_result_and_its_own_errors_pass_through() -> None:
    async def answer() -> int:
        return 42

    async def fails() -> None:
        raise LookupError("its own")

    assert run_main(answer()) == 42
    with pytest.raises(LookupError, match="its own"):
        run_main(fails())
