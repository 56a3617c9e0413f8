"""Reading topics back and running workers in tests, against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from stream.settings import Settings
from stream.worker import BatchWorker, WorkerStats


async def read_topic(
    bootstrap: str, topic: str, timeout_s: float = 20.0
) -> list[ConsumerRecord[Any, Any]]:
    """Every record now in `topic`, read without a consumer group.

    The end is where each partition's fetch high watermark says it is: Tansu 0.6
    answers ListOffsets(latest) with the last record batch's base offset + 1, so
    `end_offsets()` undercounts there.
    """
    records, _ = await _read_to_end(bootstrap, topic, timeout_s)
    return records


async def _read_to_end(
    bootstrap: str, topic: str, timeout_s: float
) -> tuple[list[ConsumerRecord[Any, Any]], dict[int, int]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord[Any, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            batch = await consumer.getmany(timeout_ms=300)
            for part in batch.values():
                records.extend(part)
            highwater = {tp: consumer.highwater(tp) for tp in tps}
            positions = {tp: await consumer.position(tp) for tp in tps}
            if not batch and all(
                hw is not None and positions[tp] >= hw for tp, hw in highwater.items()
            ):
                return records, {tp.partition: positions[tp] for tp in tps}
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
    finally:
        await consumer.stop()


async def committed_offsets(settings: Settings) -> dict[int, int | None]:
    """The group's committed offset per partition of the events topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(settings.topic_events)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(settings.topic_events) or set()
        return {
            p: await consumer.committed(TopicPartition(settings.topic_events, p))
            for p in sorted(partitions)
        }
    finally:
        await consumer.stop()


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The next offset to be written in each partition of `topic`."""
    _, ends = await _read_to_end(settings.kafka_bootstrap, topic, 20.0)
    return ends


async def listed_end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """What ListOffsets(latest) says of each partition of `topic`, without reading its
    records: for a topic still being written, which `end_offsets` would chase. At most
    the true end on Tansu 0.6 (see `read_topic`)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def drain(
    settings: Settings, idle_s: float = 1.0, worker: BatchWorker | None = None
) -> WorkerStats:
    """Run a worker until nothing arrives for `idle_s`, then close it."""
    worker = worker or BatchWorker(settings)
    await worker.start()
    try:
        return await asyncio.wait_for(worker.run(until_idle_s=idle_s), timeout=120)
    finally:
        await worker.close()


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Until `condition()` holds, checked every 50 ms; TimeoutError naming `what` after
    `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"not within {timeout_s:.0f}s: {what}")
        await asyncio.sleep(0.05)
