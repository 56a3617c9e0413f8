"""Getting events onto the events topic: from a generator, from a file."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from stream import kafka
from stream.file_import import (
    CsvOptions,
    ImportReport,
    Record,
    UnreadableFileError,
    read_events,
)
from stream.settings import Settings

IN_FLIGHT = 20_000  # sends awaited in groups, so memory stays flat on large inputs
READ_AHEAD = 10_000  # records of a file read before the sends take them
# The reading thread wakes the waiting event loop once this many records are ready (or at
# the end); the loop looks in between. A wake per record cost an import 15 % of its time.
HAND_AT = 256
LOOK_S = 0.01


# Called with each record's future once the broker has answered it.
OnAck = Callable[[asyncio.Future[Any]], None]


async def send_all(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[Record] | AsyncIterable[Record],
    on_ack: OnAck | None = None,
) -> int:
    """Send (key, value) records on a started producer, wait for every ack, return the count.

    Cancelled, it leaves the acks it waits for as they are (a cancelled gather would
    cancel them): the records are sent anyway as the producer stops, and `on_ack` hears.
    """
    sent = 0
    pending = []

    async def send(key: bytes | None, value: bytes) -> None:
        nonlocal sent
        ack = await producer.send(topic, value, key=key)
        if on_ack is not None:
            ack.add_done_callback(on_ack)
        pending.append(ack)
        if len(pending) >= IN_FLIGHT:
            await asyncio.shield(asyncio.gather(*pending))
            sent += len(pending)
            pending.clear()

    if isinstance(records, AsyncIterable):
        async for key, value in records:
            await send(key, value)
    else:
        for key, value in records:
            await send(key, value)
    await asyncio.shield(asyncio.gather(*pending))
    return sent + len(pending)


async def send_records(
    settings: Settings,
    records: Iterable[Record] | AsyncIterable[Record],
    topic: str | None = None,
    on_ack: OnAck | None = None,
    **producer_options: Any,
) -> int:
    """Open a producer, send the records to `topic` (default: the events topic), close it
    (which still delivers what it holds when the send was cancelled)."""
    producer = kafka.producer(settings, **producer_options)
    try:
        await producer.start()  # inside: a producer that could not start is closed too
        return await send_all(producer, topic or settings.topic_events, records, on_ack)
    finally:
        await producer.stop()


class ReadAside:
    """Records that a thread of their own reads, handed to the event loop as they come.

    A signal interrupts a read of the main thread: a read waiting on a pipe or a
    terminal then returned what it had, and the import took that for the end of the
    file (sending a line cut in half, or saying a CSV file had no header). Read on
    another thread, the file never sees the signal, and Ctrl-C stops the sending at
    once, even while a read waits for more. The thread is a daemon, left in its read
    when the process exits. `opened` raises what opening the records raised (a bad
    mapping, a missing file), before anything is sent.
    """

    def __init__(self, open_records: Callable[[], Iterable[Record]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready: deque[Record | BaseException | None] = deque()  # None: the end
        self._room = threading.Event()  # set while fewer than READ_AHEAD records wait
        self._room.set()
        self._arrived = asyncio.Event()
        self._waiting = False  # the loop waits for `_arrived`
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._stopped = False
        threading.Thread(
            target=self._read, args=(open_records,), name="profiler-read", daemon=True
        ).start()

    def _read(self, open_records: Callable[[], Iterable[Record]]) -> None:
        try:
            records = iter(open_records())
        except Exception as exc:  # raised in the event loop, where it is read
            self._call(self._open, exc)
            return
        self._call(self._open, None)
        try:
            for record in records:
                if len(self._ready) >= READ_AHEAD:
                    self._room.clear()
                    if len(self._ready) >= READ_AHEAD:  # not taken since: wait for room
                        self._room.wait()
                if self._stopped:
                    return
                self._ready.append(record)
                if self._waiting and len(self._ready) >= HAND_AT:
                    self._wake()
        except Exception as exc:  # raised in the event loop, after the records before it
            self._ready.append(exc)
        else:
            self._ready.append(None)
        self._wake()

    def _wake(self) -> None:
        if self._waiting:
            self._waiting = False
            self._call(self._arrived.set)

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
            self._loop.call_soon_threadsafe(callback, *args)

    def _open(self, error: Exception | None) -> None:
        if self._opened.done():  # cancelled: the import was stopped while it opened
            return
        if error is None:
            self._opened.set_result(None)
        else:
            self._opened.set_exception(error)

    async def opened(self) -> None:
        await self._opened

    async def __aiter__(self) -> AsyncIterator[Record]:
        ready, room = self._ready, self._room
        try:
            while True:
                if not ready:
                    self._arrived.clear()
                    self._waiting = True
                    if not ready:  # nothing handed since: wait for the thread, a while
                        # Not `wait_for`: on Python 3.11 it returns the result of a wait
                        # that ends as the task is cancelled and drops the cancellation
                        # (the thread sets `_arrived` often), so a Ctrl-C was lost, and
                        # with it the count of the task's cancellations later timeouts read.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(LOOK_S):
                                await self._arrived.wait()
                    self._waiting = False
                    continue
                item = ready.popleft()
                if not room.is_set():
                    room.set()
                if isinstance(item, tuple):
                    yield item
                elif item is None:
                    return
                else:
                    raise item
        finally:
            self._stopped = True
            room.set()  # a thread waiting for room sees the stop


async def produce_file(
    settings: Settings,
    path: Path,
    preset: str | None,
    mapping: dict[str, str] | None,
    *,
    limit: int | None = None,
    options: CsvOptions | None = None,
    produced: Produced | None = None,
) -> Produced:
    """Convert `path` to events (see `stream.file_import`), send them, say what went out.

    `limit`: events sent at most. `produced` (its topic is where they go): filled in as
    the broker acknowledges, so that a caller interrupted (Ctrl-C) can still tell what
    went out.
    """
    produced = produced if produced is not None else Produced(settings.topic_events)
    report = produced.report

    def open_records() -> Iterable[Record]:
        records = read_events(path, preset, mapping, options=options, report=report)
        return records if limit is None else islice(records, limit)

    records = ReadAside(open_records)
    await records.opened()
    try:
        await send_records(settings, records, produced.topic, produced.acked)
    except UnreadableFileError as exc:  # part way through: what went out before it stays out
        raise UnreadableFileError(
            f"{exc}; the {report.produced} events before that were sent to "
            f"{produced.topic} ({report.summary()})"
        ) from exc
    return produced


@dataclass
class Produced:
    """What `produce_file` sent (acknowledged by the broker), where, and what the file held."""

    topic: str
    report: ImportReport = field(default_factory=ImportReport)
    sent: int = 0

    def acked(self, ack: asyncio.Future[Any]) -> None:
        self.sent += not ack.cancelled() and ack.exception() is None

    def summary(self) -> str:
        return f"sent {self.sent} events to {self.topic}; {self.report.summary()}"
