"""Getting events onto the events topic: from a generator, from a file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

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


async def send_all(
    producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> int:
    """Send (key, value) records on a started producer, wait for every ack, return the count."""
    sent = 0
    pending = []
    for key, value in records:
        pending.append(await producer.send(topic, value, key=key))
        if len(pending) >= IN_FLIGHT:
            await asyncio.gather(*pending)
            sent += len(pending)
            pending.clear()
    await asyncio.gather(*pending)
    return sent + len(pending)


async def send_records(
    settings: Settings,
    records: Iterable[tuple[bytes | None, bytes]],
    topic: str | None = None,
    **producer_options: Any,
) -> int:
    """Open a producer, send the records to `topic` (default: the events topic), close it."""
    producer = kafka.producer(settings, **producer_options)
    try:
        await producer.start()  # inside: a producer that could not start is closed too
        return await send_all(producer, topic or settings.topic_events, records)
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
) -> Produced:
    """Convert `path` to events (see `stream.file_import`), send them, say what went out.

    `limit`: events sent at most.
    """
    report = ImportReport()
    records = read_events(path, preset, mapping, options=options, report=report)
    if limit is not None:
        records = islice(records, limit)
    try:
        sent = await send_records(settings, records)
    except UnreadableFileError as exc:  # part way through: what went out before it stays out
        raise UnreadableFileError(
            f"{exc}; the {report.produced} events before that were sent to "
            f"{settings.topic_events} ({report.summary()})"
        ) from exc
    return Produced(sent, settings.topic_events, report)


class Produced(NamedTuple):
    """What `produce_file` sent, where, and what the file held."""

    sent: int
    topic: str
    report: ImportReport

    def summary(self) -> str:
        return f"sent {self.sent} events to {self.topic}; {self.report.summary()}"
