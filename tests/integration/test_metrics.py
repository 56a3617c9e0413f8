"""What `/metrics` counts, against a live worker, broker and Redis."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord
from redis import asyncio as aioredis

from stream import metrics
from stream.producing import send_records
from stream.settings import Settings
from stream.worker import BatchWorker, next_offsets, wall_clock_ms


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def take(worker: BatchWorker, count: int) -> list[ConsumerRecord[Any, Any]]:
    """At least `count` records from the worker's own consumer."""
    records: list[ConsumerRecord[Any, Any]] = []
    while len(records) < count:
        batch = await worker.consumer.getmany(timeout_ms=200)
        records += [record for part in batch.values() for record in part]
    return records


async def test_a_write_that_lost_to_another_writer_counts_each_score_once(
    topics: Settings, redis_client: aioredis.Redis
) -> None:
    """The users of a write that did not land are folded and scored again: the risk
    score histogram counted each of their scored events once per attempt."""
    now = wall_clock_ms()
    login = {"event_id": "e1", "user_id": "ada", "type": "login", "ts": now}
    purchase = {"event_id": "e2", "user_id": "ada", "type": "purchase", "amount": 30, "ts": now}
    await send_records(topics, [(b"ada", orjson.dumps(login))])
    worker = BatchWorker(topics)
    await worker.start()
    try:
        await worker.process(await take(worker, 1))  # ada's profile, version 1
        await send_records(topics, [(b"ada", orjson.dumps(purchase))])
        records = await take(worker, 1)
        scored = sample("profiler_risk_score_count")
        started = time.monotonic()
        ends = next_offsets(records)
        folded = await worker._fold(records, ends, started)
        await redis_client.hincrby("profile:{ada}", "version", 1)  # another worker wrote ada
        result = await worker._write(records, folded, frozenset())
        await worker._finish(records, ends, result, started)
        assert result.outcomes["applied"] == 1 and result.refolded == {"ada"}
        assert sample("profiler_risk_score_count") - scored == 1
    finally:
        await worker.close()
