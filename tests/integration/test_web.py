"""`profiler run`'s web endpoints against a live worker, broker and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
from redis import asyncio as aioredis

from profiling.encoder import HashingEncoder
from stream import metrics
from stream.devstack import LocalRedis, free_port
from stream.producing import send_records
from stream.settings import Settings
from stream.web import readiness, start_web
from stream.worker import UNREADY_AFTER_FAILED_BATCHES, BatchWorker, wall_clock_ms


async def get(port: int, path: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as reply,
    ):
        return reply.status, await reply.read()


async def wait_for_status(port: int, path: str, status: int, timeout_s: float = 20.0) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        code, body = await get(port, path)
        if code == status:
            return body
        assert asyncio.get_running_loop().time() < deadline, (code, body)
        await asyncio.sleep(0.1)


async def test_health_ready_metrics_and_profile_lookup(topics: Settings) -> None:
    event = {"event_id": "w1", "user_id": "ada", "type": "login", "ts": wall_clock_ms()}
    braced = {**event, "event_id": "w2", "user_id": "{x}/1"}  # the route took no brace
    await send_records(topics, [(b"ada", orjson.dumps(event)), (b"{x}/1", orjson.dumps(braced))])
    worker = BatchWorker(topics)
    await worker.start()
    port = free_port()
    web = await start_web(worker, port, max_lag=1000)
    task = asyncio.create_task(worker.run())
    try:
        code, body = await get(port, "/health")
        assert code == 200 and orjson.loads(body).keys() == {"status", "uptime_s"}
        assert orjson.loads(body)["status"] == "ok"

        ready = orjson.loads(await wait_for_status(port, "/ready", 200))
        assert ready["ready"] is True
        assert ready["checks"]["redis"] is True and ready["checks"]["broker"] is True
        assert len(ready["checks"]["partitions"]) == 3

        profile = orjson.loads(await wait_for_status(port, "/profile/ada", 200))
        assert profile["user_id"] == "ada" and profile["count:login"] == 1
        code, _ = await get(port, "/profile/nobody")
        assert code == 404
        braced_profile = orjson.loads(await wait_for_status(port, "/profile/%7Bx%7D%2F1", 200))
        assert braced_profile["user_id"] == "{x}/1"

        code, text = await get(port, "/metrics")
        assert code == 200
        assert b'profiler_events_total{outcome="applied",type="login"}' in text
        assert b"profiler_consumer_lag{" in text
        assert b'profiler_profile_loads_total{source="redis"}' in text
    finally:
        worker.request_stop()
        await task
        await web.cleanup()
        await worker.close()


async def test_ready_fails_when_lag_exceeds_the_bound(topics: Settings) -> None:
    now = wall_clock_ms()
    events = [
        (b"lin", orjson.dumps({"event_id": f"l{i}", "user_id": "lin", "type": "login", "ts": now}))
        for i in range(50)
    ]
    await send_records(topics, events)
    worker = BatchWorker(topics)
    await worker.start()
    port = free_port()
    web = await start_web(worker, port, max_lag=10)
    try:
        # One batch of one record: the other 49 stay behind the high watermark.
        batch = {}
        while not batch:
            batch = await worker.consumer.getmany(timeout_ms=200, max_records=1)
        await worker.process([record for part in batch.values() for record in part])
        report = orjson.loads(await wait_for_status(port, "/ready", 503))
        assert report["ready"] is False and report["checks"]["lag"] > 0
    finally:
        await web.cleanup()
        await worker.close()


async def test_a_worker_with_a_backlog_is_not_ready_before_its_first_batch(
    topics: Settings,
) -> None:
    """Lag counted only partitions a batch had come from: a worker just given partitions
    with a backlog said ready, with a lag of 0."""
    now = wall_clock_ms()
    logins = [
        {"event_id": f"b{i}", "user_id": f"u{i}", "type": "login", "ts": now} for i in range(60)
    ]
    events = [(login["user_id"].encode(), orjson.dumps(login)) for login in logins]
    await send_records(topics, events)
    worker = BatchWorker(topics)
    await worker.start()
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            report = await readiness(worker, max_lag=10)
            if report["checks"]["partitions"] and not report["checks"]["lag_unknown"]:
                break
            assert report["ready"] is False  # partitions or their ends not known yet
            assert asyncio.get_running_loop().time() < deadline, report
            await asyncio.sleep(0.1)
        assert report["ready"] is False and report["checks"]["lag"] == len(events)
    finally:
        await worker.close()


async def test_a_partition_that_comes_back_reports_no_lag_until_its_next_batch(
    topics: Settings,
) -> None:
    """A partition that moved away and back: its old position would show the records the
    other worker applied meanwhile as lag, and /ready would fail with nothing behind."""
    now = wall_clock_ms()
    events = [
        (b"lin", orjson.dumps({"event_id": f"l{i}", "user_id": "lin", "type": "login", "ts": now}))
        for i in range(50)
    ]
    await send_records(topics, events[:1])
    worker = BatchWorker(topics)
    await worker.start()
    try:
        batch = {}
        while not batch:
            batch = await worker.consumer.getmany(timeout_ms=200, max_records=1)
        await worker.process([record for part in batch.values() for record in part])
        (tp,) = batch  # the partition of user lin
        await worker.assignment.on_partitions_revoked({tp})
        await send_records(topics, events[1:])  # applied by the worker that took it
        await worker.assignment.on_partitions_assigned({tp})
        while worker.consumer.highwater(tp) != len(events):
            await worker.consumer.getmany(timeout_ms=200)
        assert worker.consumer_lag() == {}  # unknown until it is fetched from its commit
    finally:
        await worker.close()


async def test_metrics_carry_the_lag_of_every_owned_partition(topics: Settings) -> None:
    """`profiler_consumer_lag` had a series only for partitions a batch had come from
    since their assignment: a worker given quiet partitions (after any rebalance) showed
    none, while `/ready` counted their lag."""
    event = {"event_id": "q1", "user_id": "ada", "type": "login", "ts": wall_clock_ms()}
    await send_records(topics, [(b"ada", orjson.dumps(event))])
    worker = BatchWorker(topics)
    await worker.start()
    port = free_port()
    web = await start_web(worker, port, max_lag=1000)
    task = asyncio.create_task(worker.run())
    try:
        ready = orjson.loads(await wait_for_status(port, "/ready", 200))
        assert len(ready["checks"]["partitions"]) == 3
        _, text = await get(port, "/metrics")
        series = [
            line
            for line in text.decode().splitlines()
            if line.startswith("profiler_consumer_lag{") and f'"{topics.topic_events}"' in line
        ]
        assert len(series) == 3, series
    finally:
        worker.request_stop()
        await task
        await web.cleanup()
        await worker.close()


async def test_a_worker_whose_redis_refuses_writes_is_not_ready_until_they_pass(
    make_settings: Callable[..., Awaitable[Settings]],
) -> None:
    """A Redis demoted to a replica answers PING and refuses every write (READONLY): the
    worker retried its batch for ever while `/ready` said ready, with a lag of 0."""
    own = LocalRedis().start()
    admin = aioredis.Redis.from_url(own.url)
    topics = await make_settings(redis_url=own.url)
    worker = BatchWorker(topics)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        await admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # never reached
        retries = metrics.RETRIES.labels("redis")._value.get()
        login = {"event_id": "r1", "user_id": "ada", "type": "login", "ts": wall_clock_ms()}
        await send_records(topics, [(b"ada", orjson.dumps(login))])
        deadline = asyncio.get_running_loop().time() + 20
        while metrics.RETRIES.labels("redis")._value.get() == retries:  # the write refused
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        report = await readiness(worker, max_lag=1000)
        assert report["ready"] is False and "READONLY" in report["checks"]["redis"]

        await admin.execute_command("REPLICAOF", "NO", "ONE")
        while not (report := await readiness(worker, max_lag=1000))["ready"]:
            assert asyncio.get_running_loop().time() < deadline + 20, report
            await asyncio.sleep(0.1)
        while worker.stats.applied < 1:  # counted once the batch is published and committed
            assert asyncio.get_running_loop().time() < deadline + 20
            await asyncio.sleep(0.05)
        assert worker.stats.applied == 1
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        worker.request_stop()
        await task
        await worker.close()
        await admin.aclose()
        own.stop()


async def test_a_worker_asked_to_stop_is_not_ready_while_its_batch_in_flight_drains(
    make_settings: Callable[..., Awaitable[Settings]],
) -> None:
    """After SIGTERM the worker finishes the batch it took (written, published, committed);
    meanwhile `/ready` said ready, and a load balancer kept sending traffic to it."""
    own = LocalRedis().start()  # its own: this test pauses its writes
    admin = aioredis.Redis.from_url(own.url)
    topics = await make_settings(partitions=1, redis_url=own.url)
    worker = BatchWorker(topics)
    await worker.start()
    port = free_port()
    web = await start_web(worker, port, max_lag=1000)
    task = asyncio.create_task(worker.run())
    try:
        await wait_for_status(port, "/ready", 200)
        # Writes wait (PING still answers): the batch stays in flight until they resume.
        await admin.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
        login = {"event_id": "s1", "user_id": "ada", "type": "login", "ts": wall_clock_ms()}
        await send_records(topics, [(b"ada", orjson.dumps(login))])
        (tp,) = worker.assignment.partitions
        deadline = asyncio.get_running_loop().time() + 20
        while await worker.consumer.position(tp) < 1:  # the batch taken
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        worker.request_stop()

        code, body = await get(port, "/ready")
        assert not task.done()  # still draining its batch
        assert code == 503, body
        assert orjson.loads(body)["checks"]["worker"] == "stopping"

        await admin.execute_command("CLIENT", "UNPAUSE")
        await asyncio.wait_for(task, 20)
        assert worker.stats.applied == 1  # drained: written and committed
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        worker.request_stop()
        await task
        await web.cleanup()
        await worker.close()
        await admin.aclose()
        own.stop()


async def test_a_worker_whose_batches_all_fail_on_a_bug_is_not_ready_until_one_applies(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encoder broken for good: each batch was applied user by user, every event went
    to the DLQ as `internal_error`, and `/ready` said ready throughout. Batches of only
    malformed records are the input's fault: they neither make it unready nor ready."""
    worker = BatchWorker(topics)
    await worker.start()
    port = free_port()
    web = await start_web(worker, port, max_lag=1000)
    task = asyncio.create_task(worker.run())
    sent = 0

    async def one_batch(body: bytes) -> None:
        nonlocal sent
        sent += 1
        await send_records(topics, [(b"ada", body)])
        deadline = asyncio.get_running_loop().time() + 20
        while worker.stats.batches < sent:  # committed
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)

    def view(n: int) -> bytes:
        return orjson.dumps({"event_id": f"v{n}", "user_id": "ada", "type": "view",
                             "item_id": f"i{n}", "title": f"new title {n}",
                             "ts": wall_clock_ms()})  # fmt: skip

    def broken(self: HashingEncoder, texts: object) -> object:
        raise RuntimeError("the encoder's device is gone")

    try:
        await wait_for_status(port, "/ready", 200)
        monkeypatch.setattr(HashingEncoder, "encode", broken)
        for n in range(UNREADY_AFTER_FAILED_BATCHES - 1):
            await one_batch(view(n))
            await one_batch(b"not json")  # the input's fault: no step either way
        code, _ = await get(port, "/ready")
        assert code == 200  # not yet: the bound is not reached
        await one_batch(view(99))
        assert worker.stats.errors["internal_error"] == UNREADY_AFTER_FAILED_BATCHES
        code, body = await get(port, "/ready")
        report = orjson.loads(body)
        assert code == 503 and report["ready"] is False, report
        reason = report["checks"]["batches"]
        assert reason.startswith(f"error: the last {UNREADY_AFTER_FAILED_BATCHES} batches")
        assert "RuntimeError: the encoder's device is gone" in reason

        await one_batch(b"not json")  # still nothing applied
        assert (await get(port, "/ready"))[0] == 503
        monkeypatch.undo()  # the encoder back
        await one_batch(view(100))
        report = orjson.loads(await wait_for_status(port, "/ready", 200))
        assert report["checks"]["batches"] is True
    finally:
        worker.request_stop()
        await task
        await web.cleanup()
        await worker.close()


async def test_a_profile_asked_while_redis_is_down_is_503_saying_so(
    make_settings: Callable[..., Awaitable[Settings]],
) -> None:
    """The lookup let Redis's error through: aiohttp's plain-text 500, and a Redis that
    took every connection and answered nothing held the request for ever."""
    own = LocalRedis().start()  # its own: this test pauses it, then stops it
    admin = aioredis.Redis.from_url(own.url)
    topics = await make_settings(redis_url=own.url)
    worker = BatchWorker(topics)
    await worker.start()
    port = free_port()
    web = await start_web(worker, port, max_lag=1000)
    try:
        code, _ = await get(port, "/profile/ada")
        assert code == 404

        await admin.execute_command("CLIENT", "PAUSE", "4000", "ALL")  # reads wait too
        code, body = await get(port, "/profile/ada")
        assert code == 503, body
        assert orjson.loads(body) == {
            "error": "redis_unreachable",
            "user_id": "ada",
            "redis": "error: no answer within 2 s",
        }

        own.stop()
        code, body = await get(port, "/profile/ada")
        assert code == 503, body
        reply = orjson.loads(body)
        assert reply["error"] == "redis_unreachable" and reply["user_id"] == "ada"
        assert reply["redis"].startswith("error: ") and "onnect" in reply["redis"], reply
    finally:
        await web.cleanup()
        await worker.close()
        await admin.aclose()
        own.stop()
