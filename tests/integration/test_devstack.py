"""The dev stack is real: Kafka wire protocol, codecs, group offsets, Redis, clean shutdown.

Everything the worker relies on from the broker is exercised here through aiokafka
against Tansu, so a Tansu limit shows up in this file first rather than as a
mysterious worker failure. Batch codecs are checked on the stored bytes, not just
by a successful round trip: a broker could decompress and store plainly.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from stream import devstack
from stream.devstack import (
    TANSU_FAST_GROUP,
    DevStack,
    DevStackError,
    LocalBroker,
    LocalRedis,
    create_topics,
    default_topics,
    kafka_metadata_brokers,
    redis_pong,
)
from stream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# Kafka record-batch attribute values (the low three bits).
CODEC_IDS = {None: 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


async def consume(
    consumer: AIOKafkaConsumer, count: int, timeout_s: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Exactly `count` records (or fail): getmany until enough arrived."""
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count} records"
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            records.extend(batch)
    assert len(records) == count
    return records


async def stored_codecs(bootstrap: str, tp: TopicPartition) -> list[int]:
    """Compression codec of each record batch as the broker stores and serves it."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(tp)
        request = FetchRequest(100, 1, 8 << 20, 0, [(tp.topic, [(tp.partition, 0, 8 << 20)])])
        response = await client.send(leader, request)
    finally:
        await client.close()
    records = MemoryRecords(response.topics[0][1][0][-1])
    codecs = []
    while (batch := records.next_batch()) is not None:
        codecs.append(batch.compression_type)
    return codecs


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_gone(pids: list[int], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not all(process_gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- broker -------------------------------------------------------------------


def test_broker_advertises_the_port_it_listens_on(broker: LocalBroker) -> None:
    brokers = kafka_metadata_brokers(broker.port)
    assert brokers is not None
    assert [(host, port) for _, host, port in brokers] == [("127.0.0.1", broker.port)]
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"


@pytest.mark.parametrize("codec", list(CODEC_IDS))
async def test_produce_and_consume_with_each_codec(topics: Settings, codec: str | None) -> None:
    tp = TopicPartition(topics.topic_events, 0)
    values = [b'{"user_id": "u%d", "title": "%s"}' % (i, b"phone " * 40) for i in range(200)]
    producer = AIOKafkaProducer(
        bootstrap_servers=topics.kafka_bootstrap,
        compression_type=codec,
        enable_idempotence=False,  # Tansu memory:// has no InitProducerId
        acks="all",
        linger_ms=5,
    )
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send(tp.topic, value, key=b"u%d" % i, partition=tp.partition)
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=topics.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records = await consume(consumer, len(values))
    finally:
        await consumer.stop()

    assert [r.value for r in records] == values
    assert [r.key for r in records] == [b"u%d" % i for i in range(len(values))]
    assert [r.offset for r in records] == list(range(len(values)))
    codecs = await stored_codecs(topics.kafka_bootstrap, tp)
    assert codecs and set(codecs) == {CODEC_IDS[codec]}


async def test_group_commit_is_read_back_and_resumed_from(topics: Settings) -> None:
    tp = TopicPartition(topics.topic_events, 1)
    producer = AIOKafkaProducer(bootstrap_servers=topics.kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(10):
            await producer.send(tp.topic, b"v%d" % i, partition=tp.partition)
        await producer.flush()
    finally:
        await producer.stop()

    first = group_consumer(topics)
    await first.start()
    try:
        assert len(await consume(first, 10)) == 10
        await first.commit({tp: 6})
        assert await first.committed(tp) == 6
    finally:
        await first.stop()

    second = group_consumer(topics)
    await second.start()
    try:
        assert await second.committed(tp) == 6
        resumed = await consume(second, 4)
    finally:
        await second.stop()
    assert [(r.offset, r.value) for r in resumed] == [(i, b"v%d" % i) for i in range(6, 10)]


def group_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A member of the test's group (subscribe: join + sync), committing by hand.

    With aiokafka's default timeouts each join here takes 5 s and the second one
    18 s on Tansu; see `TANSU_FAST_GROUP`.
    """
    return AIOKafkaConsumer(
        settings.topic_events,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **TANSU_FAST_GROUP,
    )


@pytest.mark.xfail(
    strict=True,
    reason="Tansu 0.6: ListOffsets(latest) is the last batch's base offset + 1; "
    "read the high watermark from a fetch (consumer.highwater) instead",
)
async def test_end_offsets_count_every_record_of_the_last_batch(topics: Settings) -> None:
    tp = TopicPartition(topics.topic_events, 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=topics.kafka_bootstrap, enable_idempotence=False, linger_ms=50
    )
    await producer.start()
    try:
        for _ in range(5):
            await producer.send(tp.topic, b"x", partition=tp.partition)
        await producer.flush()  # one batch of five records
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=topics.kafka_bootstrap)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        await consume(consumer, 5)
        assert consumer.highwater(tp) == 5  # the fetch response gets it right
        assert (await consumer.end_offsets([tp]))[tp] == 5  # Tansu answers 1
    finally:
        await consumer.stop()


async def test_create_topics_is_idempotent_and_checks_partitions(
    broker: LocalBroker, topics: Settings
) -> None:
    await create_topics(broker.bootstrap, {topics.topic_events: 3, "fresh-" + topics.group_id: 2})
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topics.topic_events, "fresh-" + topics.group_id])
    finally:
        await admin.close()
    assert sorted(len(t["partitions"]) for t in described) == [2, 3]
    with pytest.raises(DevStackError, match="exists with 3 partitions, wanted 5"):
        await create_topics(broker.bootstrap, {topics.topic_events: 5})


async def test_each_call_gets_its_own_topics_and_group(
    make_settings: Callable[..., Awaitable[Settings]],
) -> None:
    first = await make_settings()
    second = await make_settings(partitions=1)
    names = [
        (s.topic_events, s.topic_dlq, s.topic_updates, s.topic_alerts, s.topic_labels)
        for s in (first, second)
    ]
    assert not set(names[0]) & set(names[1])
    assert first.group_id != second.group_id
    assert first.topic_commands.startswith("profile-commands.")


# --- redis --------------------------------------------------------------------


@pytest.mark.parametrize("run", [1, 2])  # the second run sees the first run's writes gone
async def test_redis_round_trip_starts_empty(redis_url: str, run: int) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0  # flushed for this test
        vector = bytes(range(256)) * 6
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset("profile:{u1}", mapping={"version": 1, "vec_long": vector})
            pipe.expire("profile:{u1}", 60)
            await pipe.execute()
        assert await client.hgetall("profile:{u1}") == {b"version": b"1", b"vec_long": vector}
        assert 0 < await client.ttl("profile:{u1}") <= 60
    finally:
        await client.aclose()


# --- lifecycle ----------------------------------------------------------------


def test_devstack_env_lines_point_at_a_live_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    with DevStack(Settings(), partitions=2) as stack:
        lines = stack.env_lines()
        for line in lines:
            name, _, value = line.partition("=")
            monkeypatch.setenv(name, value)
        from_env = Settings()
        assert [line.split("=", 1)[0] for line in lines] == [
            "PROFILER_KAFKA_BOOTSTRAP",
            "PROFILER_REDIS_URL",
        ]
        assert from_env.kafka_bootstrap == stack.settings().kafka_bootstrap
        assert from_env.kafka_bootstrap == stack.broker.bootstrap
        assert from_env.redis_url == stack.redis.url
        assert redis_pong(stack.redis.port)
        asyncio.run(create_topics(from_env.kafka_bootstrap, {from_env.topic_events: 2}))
        pids, ports = [stack.broker.pid, stack.redis.pid], (stack.broker.port, stack.redis.port)
    assert wait_gone(pids, 1.0)
    assert kafka_metadata_brokers(ports[0]) is None
    assert not redis_pong(ports[1])


async def test_async_devstack_creates_the_worker_topics() -> None:
    async with DevStack(Settings(topic_events="shop-events"), partitions=2) as stack:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings().kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(list(default_topics(stack.settings(), 2)))
        finally:
            await admin.close()
        pids = [stack.broker.pid, stack.redis.pid]
    assert {t["topic"]: len(t["partitions"]) for t in described} == {
        "shop-events": 2,
        "behavior-events.dlq": 2,
        "profile-updates": 2,
        "fraud-alerts": 2,
        "fraud-labels": 2,
        "profile-commands": 2,
    }
    assert wait_gone(pids, 1.0)


@pytest.mark.parametrize("server_class", [LocalBroker, LocalRedis])
def test_stop_leaves_nothing_behind(server_class: type[LocalBroker | LocalRedis]) -> None:
    server = server_class().start()
    pid, workdir, log = server.pid, server.workdir, server.log_path
    assert server.running and workdir is not None and log is not None and log.exists()
    server.stop()
    server.stop()  # twice is fine
    assert process_gone(pid) and not server.running
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie


@pytest.mark.parametrize("death", ["sigkill", "exception"])
def test_servers_die_with_the_process_that_started_them(death: str) -> None:
    script = textwrap.dedent(
        """
        import os, signal, sys
        from stream.devstack import LocalBroker, LocalRedis
        servers = [LocalBroker().start(), LocalRedis().start()]
        print(*(s.pid for s in servers), *(s.workdir for s in servers), flush=True)
        sys.stdin.readline()
        if sys.argv[1] == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("crashed test run")
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, death],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    words = child.stdout.readline().split()
    pids, workdirs = [int(pid) for pid in words[:2]], [Path(w) for w in words[2:]]
    try:
        assert len(pids) == 2 and not any(process_gone(pid) for pid in pids)
        child.stdin.write("go\n")
        child.stdin.flush()
        expected = -signal.SIGKILL if death == "sigkill" else 1
        assert child.wait(10) == expected
        assert wait_gone(pids), "a server outlived the process that started it"
        if death == "exception":  # atexit ran: directories gone too
            assert not any(w.exists() for w in workdirs)
    finally:
        for pid in pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
        for workdir in workdirs:  # after SIGKILL only the logs remain, for a post-mortem
            shutil.rmtree(workdir, ignore_errors=True)


def test_start_failure_reports_the_log_tail() -> None:
    broker = LocalBroker(storage="file:///no/such/engine")
    with pytest.raises(DevStackError, match="UnsupportedStorageUrl"):
        broker.start()
    assert not broker.running and broker.workdir is None


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("server_class", [LocalBroker, LocalRedis])
def test_start_moves_on_when_its_port_was_taken(
    server_class: type[LocalBroker | LocalRedis],
    taken_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_free_port = devstack.free_port
    offered = iter([taken_port])
    monkeypatch.setattr(devstack, "free_port", lambda: next(offered, None) or real_free_port())
    with server_class() as server:
        assert server.port not in (0, taken_port)
        assert server.running


@pytest.mark.parametrize("server_class", [LocalBroker, LocalRedis])
def test_start_moves_on_when_a_server_of_its_kind_took_its_port(
    server_class: type[LocalBroker | LocalRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other server answers on the port at once; ours fails to bind and exits."""
    with server_class() as other:
        real_free_port = devstack.free_port
        offered = iter([other.port])
        monkeypatch.setattr(devstack, "free_port", lambda: next(offered, None) or real_free_port())
        with server_class() as server:
            assert server.port != other.port
            time.sleep(0.5)  # a server that lost the port has exited by now
            assert server.running, server.log_tail()


def test_a_demo_whose_loop_does_not_stop_after_its_server_died_is_ended() -> None:
    """The demo cancels its worker when a server of its stack dies; a cancellation that
    something swallowed (aiokafka does, in places) left it retrying a dead broker for ever.
    Here an event loop that swallows every cancellation stands for that."""
    script = textwrap.dedent(
        """
        import asyncio, os, signal, sys
        from stream import demo
        from stream.devstack import DevStack

        async def deaf() -> None:
            while True:
                try:
                    await asyncio.sleep(0.1)
                except asyncio.CancelledError:
                    pass

        demo.STUCK_AFTER_FAILURE_S = 1.0
        with DevStack() as stack:
            print(stack.broker.pid, stack.redis.pid, flush=True)
            os.kill(stack.redis.pid, signal.SIGKILL)
            with demo._ended_if_stuck(stack, lambda why: print("failed:", why, file=sys.stderr)):
                asyncio.run(deaf())
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    broker, redis = (int(pid) for pid in child.stdout.split())
    assert child.returncode == 1, child.stderr
    assert child.stderr.startswith("failed: redis exited with status -9"), child.stderr
    assert wait_gone([broker, redis]), "the broker outlived the demo"


def test_a_demo_interrupted_before_its_loop_steps_stops_its_stack_cleanly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A SIGHUP right after the demo printed its servers landed as asyncio.run installed
    its Ctrl-C handler: the main task was cancelled before its first step, the demo ended
    with a CancelledError traceback and warned of the shop's coroutine never awaited."""
    import io
    import warnings

    from rich.console import Console

    from stream import demo
    from stream.settings import Settings
    from tests.unit.test_interrupts import interrupt_as_asyncio_run_installs_its_handler

    printed = io.StringIO()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    failures: list[str] = []
    servers_printed = interrupt_as_asyncio_run_installs_its_handler(
        armed=lambda: ", redis " in printed.getvalue()
    )
    with servers_printed, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KeyboardInterrupt):
            demo.run_demo(
                Settings(**demo.QUICK_GROUPS),
                users=5,
                events=10,
                seed=1,
                console=Console(file=printed),
                say_failed=failures.append,
            )
        gc.collect()
    assert not [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert failures == []
    assert list(tmp_path.iterdir()) == [], "the stack's directories were left behind"
