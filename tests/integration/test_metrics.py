"""What `/metrics` counts, against a live worker, broker and Redis."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
import pytest
import redis.exceptions
from aiokafka.structs import ConsumerRecord
from redis import asyncio as aioredis

from stream import metrics, web
from stream import worker as worker_module
from stream.producing import send_records
from stream.settings import Settings
from stream.web import observe_lag
from stream.worker import BatchWorker, next_offsets, wall_clock_ms
from tests.conftest import SettingsFactory


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
        folded, _ = await worker._fold(records, ends, started)
        await redis_client.hincrby("profile:{ada}", "version", 1)  # another worker wrote ada
        result = await worker._write(records, folded, frozenset())
        await worker._finish(records, ends, result, started)
        assert result.outcomes["applied"] == 1 and result.refolded == {"ada"}
        assert sample("profiler_risk_score_count") - scored == 1
    finally:
        await worker.close()


async def test_every_applied_event_is_in_the_event_to_store_histogram(topics: Settings) -> None:
    """One observation per applied event (a sample of a hundred per batch weighed a small
    batch's events as much as a large one's), its age at the write."""
    now = wall_clock_ms()
    ages_s = [0.002, 0.02, 0.2, 2.0, 20.0] * 50  # 250 events, none at a bucket's bound
    events = [
        {"event_id": f"e{i}", "user_id": f"u{i % 7}", "type": "view", "item_id": "p1",
         "ts": now - int(age * 1000)}
        for i, age in enumerate(ages_s)
    ]  # fmt: skip
    await send_records(topics, [(str(e["user_id"]).encode(), orjson.dumps(e)) for e in events])
    worker = BatchWorker(topics)
    await worker.start()
    name = "profiler_event_to_store_seconds"
    before = {le: sample(f"{name}_bucket", {"le": le}) for le in ("0.01", "0.1", "1.0", "10.0")}
    count = sample(f"{name}_count")
    try:
        records = await take(worker, len(events))
        await worker.process(records)
    finally:
        await worker.close()
    assert sample(f"{name}_count") - count == len(events)
    # The ages grow by the time the test took to write them: 50 a decade, whatever the wait.
    for le, below in (("0.01", 50), ("0.1", 100), ("1.0", 150), ("10.0", 200)):
        assert sample(f"{name}_bucket", {"le": le}) - before[le] <= below
    assert sample(f"{name}_bucket", {"le": "10.0"}) - before["10.0"] >= 150


async def test_a_closed_worker_leaves_no_partitions_lag_or_held_back_users_in_its_gauges(
    topics: Settings,
) -> None:
    """The gauges kept a closed worker's last values (its partitions, their lag, the users
    it held back) for as long as the process ran: a stopping consumer calls no listener."""
    now = wall_clock_ms()
    first = {"event_id": "g1", "user_id": "ada", "type": "login", "ts": now}
    second = {**first, "event_id": "g2"}  # counters only: held back by the heartbeat
    await send_records(topics, [(b"ada", orjson.dumps(first))])
    worker = BatchWorker(topics)
    await worker.start()
    try:
        await worker.process(await take(worker, 1))
        await send_records(topics, [(b"ada", orjson.dumps(second))])
        await worker.process(await take(worker, 1))
        await observe_lag(worker)
        assert sample("profiler_assigned_partitions") == 3
        assert sample("profiler_held_back_users") == 1
        assert lag_series(topics.topic_events)
    finally:
        await worker.close()
    assert sample("profiler_assigned_partitions") == 0
    assert sample("profiler_held_back_users") == 0
    assert lag_series(topics.topic_events) == []


def lag_series(topic: str) -> list[str]:
    """The partitions of `topic` that `profiler_consumer_lag` has a series for."""
    return [
        sample.labels["partition"]
        for family in metrics.REGISTRY.collect()
        if family.name == "profiler_consumer_lag"
        for sample in family.samples
        if sample.labels["topic"] == topic
    ]


async def test_a_replayed_or_duplicate_foreign_purchase_is_counted_once(topics: Settings) -> None:
    """Foreign purchases were counted as they were decoded: a batch replayed after a crash
    before its commit, or an event sent twice, counted its purchase again."""
    purchase = {"event_id": "f1", "user_id": "ada", "type": "purchase", "amount": 30,
                "currency": "EUR", "ts": wall_clock_ms()}  # fmt: skip
    body = orjson.dumps(purchase)
    await send_records(topics, [(b"ada", body), (b"ada", body)])  # the second a duplicate
    worker = BatchWorker(topics)
    await worker.start()
    labels = {"currency": "other", "amount": "as_sent"}  # no rates set
    before = sample("profiler_foreign_purchases_total", labels)
    try:
        records = await take(worker, 2)
        first = await worker.process(records)
        replay = await worker.process(records)  # as the partition's next owner would
    finally:
        await worker.close()
    assert first.outcomes["applied"] == 1 and first.outcomes["duplicate"] == 1
    assert replay.outcomes["replayed"] == 2
    assert sample("profiler_foreign_purchases_total", labels) - before == 1


async def test_foreign_purchases_are_labelled_by_the_currencies_with_a_rate_and_other(
    make_settings: SettingsFactory,
) -> None:
    """The `currency` label took any three capital letters an event named: 17,576 series
    a producer could open. Now the rates' currencies, and `other` for the rest."""
    settings = await make_settings(encoder_model="none", currency_rates={"EUR": 0.92})
    now = wall_clock_ms()
    codes = ["EUR", "XQA", "XQB", "XQC"]  # three the worker has no rate for
    purchases = [
        {"event_id": f"p{i}", "user_id": "ada", "type": "purchase", "amount": 30,
         "currency": code, "ts": now}
        for i, code in enumerate(codes)
    ]  # fmt: skip
    await send_records(settings, [(b"ada", orjson.dumps(p)) for p in purchases])
    converted = {"currency": "EUR", "amount": "converted"}
    other = {"currency": "other", "amount": "left_out"}
    before = (
        sample("profiler_foreign_purchases_total", converted),
        sample("profiler_foreign_purchases_total", other),
    )
    worker = BatchWorker(settings)
    await worker.start()
    try:
        result = await worker.process(await take(worker, len(purchases)))
    finally:
        await worker.close()
    assert result.outcomes["applied"] == len(purchases)
    assert sample("profiler_foreign_purchases_total", converted) - before[0] == 1
    assert sample("profiler_foreign_purchases_total", other) - before[1] == 3
    assert not {"XQA", "XQB", "XQC"} & set(currency_labels())


def currency_labels() -> list[str]:
    """The `currency` values `profiler_foreign_purchases` has a series for."""
    return [
        sample.labels["currency"]
        for family in metrics.REGISTRY.collect()
        if family.name == "profiler_foreign_purchases"
        for sample in family.samples
    ]


async def test_a_partition_whose_lag_is_not_known_at_a_scrape_has_no_lag_series(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition whose position query found no answer in time kept its last lag, which
    looked current while it fell behind. Now its series goes until its lag is known."""
    login = {"event_id": "s1", "user_id": "ada", "type": "login", "ts": wall_clock_ms()}
    await send_records(topics, [(b"ada", orjson.dumps(login))])
    worker = BatchWorker(topics)
    await worker.start()
    try:
        records = await take(worker, 1)
        await worker.process(records)  # ada's partition: its lag known from the batch
        await observe_lag(worker)  # the other two asked for their positions, and known
        assert sorted(lag_series(topics.topic_events)) == ["0", "1", "2"]
        # No answer within the bound: the two partitions no batch came from are unknown.
        monkeypatch.setattr(web, "READY_TIMEOUT_S", 0)
        await observe_lag(worker)
        assert lag_series(topics.topic_events) == [str(records[0].partition)]
        monkeypatch.undo()
        await observe_lag(worker)
        assert sorted(lag_series(topics.topic_events)) == ["0", "1", "2"]
    finally:
        await worker.close()


async def test_a_step_given_up_as_the_worker_stops_counts_only_the_attempts_retried(
    topics: Settings,
) -> None:
    """`profiler_retries` counted the last failed attempt of a stopping worker too, though
    the step was given up rather than tried again."""
    with socket.socket() as probe:  # a port nothing listens on: Redis is gone
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gone = aioredis.Redis(port=port, socket_connect_timeout=0.5, retry_on_error=[])
    worker = BatchWorker(topics)
    worker.request_stop()
    before = sample("profiler_retries_total", {"component": "redis"})
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await worker._retrying("redis", gone.ping)
    finally:
        await gone.aclose()
        await worker.redis.aclose()  # never started: no Kafka client to stop
    retried = sample("profiler_retries_total", {"component": "redis"}) - before
    assert retried == worker_module.RETRIES_AFTER_STOP


async def test_profile_loads_count_folds_and_profile_writes_count_held_back_marks(
    topics: Settings,
) -> None:
    """`profiler_profile_loads` is what batches fold from (the cache's use): the reads of
    held-back changes and of commands, always from Redis, were counted as Redis loads.
    And the writes that mark held-back changes published were left out of
    `profiler_profiles_written`."""
    now = wall_clock_ms()
    first = {"event_id": "p1", "user_id": "ada", "type": "login", "ts": now}
    second = {**first, "event_id": "p2"}  # counters only: held back by the heartbeat
    visit = {"event_id": "p3", "user_id": "anon-1", "type": "login", "ts": now}
    await send_records(topics, [(b"ada", orjson.dumps(first)), (b"anon-1", orjson.dumps(visit))])
    worker = BatchWorker(topics)
    await worker.start()
    loads = {source: {"source": source} for source in ("cache", "redis")}

    def counted() -> tuple[float, float, float]:
        return (
            sample("profiler_profile_loads_total", loads["cache"]),
            sample("profiler_profile_loads_total", loads["redis"]),
            sample("profiler_profiles_written_total"),
        )

    try:
        await worker.process(await take(worker, 2))
        await send_records(topics, [(b"ada", orjson.dumps(second))])
        before = counted()
        await worker.process(await take(worker, 1))
        assert "ada" in worker.held_back
        assert [b - a for a, b in zip(before, counted(), strict=True)] == [1, 0, 1]

        before, published = counted(), worker.stats.held_back_published
        await worker._publish_held_back(None, handing_off=worker.held_back.take_all())
        assert worker.stats.held_back_published - published == 1
        assert [b - a for a, b in zip(before, counted(), strict=True)] == [0, 0, 1]

        # Loads are counted as a batch is observed: this one's counts hold the hand-off's.
        merge = {"command": "merge", "from_user_id": "anon-1", "user_id": "ada"}
        await send_records(topics, [(b"ada", orjson.dumps(merge))], topics.topic_commands)
        before = counted()
        result = await worker.process(await take(worker, 1))
        assert result.commands == {("merge", "merged"): 1}
        assert [b - a for a, b in zip(before, counted(), strict=True)] == [0, 0, 1]
    finally:
        await worker.close()
