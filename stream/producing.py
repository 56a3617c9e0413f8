"""Getting events onto the events topic: from a generator, from a file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from stream import kafka
from stream.file_import import (
    CsvOptions,
    ImportReport,
    UnreadableFileError,
    read_events,
)
from stream.settings import Settings

IN_FLIGHT = 20_000  # sends awaited in groups, so memory stays flat on large inputs


# Called with each record's future once the broker has answered it.
OnAck = Callable[[asyncio.Future[Any]], None]


async def send_all(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    on_ack: OnAck | None = None,
) -> int:
    """Send (key, value) records on a started producer, wait for every ack, return the count.

    Cancelled, it leaves the acks it waits for as they are (a cancelled gather would
    cancel them): the records are sent anyway as the producer stops, and `on_ack` hears.
    """
    sent = 0
    pending = []
    for key, value in records:
        ack = await producer.send(topic, value, key=key)
        if on_ack is not None:
            ack.add_done_callback(on_ack)
        pending.append(ack)
        if len(pending) >= IN_FLIGHT:
            await asyncio.shield(asyncio.gather(*pending))
            sent += len(pending)
            pending.clear()
    await asyncio.shield(asyncio.gather(*pending))
    return sent + len(pending)


async def send_records(
    settings: Settings,
    records: Iterable[tuple[bytes | None, bytes]],
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
    records = read_events(path, preset, mapping, options=options, report=report)
    if limit is not None:
        records = islice(records, limit)
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
