"""On a Redis Cluster (`PROFILER_REDIS_CLUSTER=true`): every call stays in one hash slot.

The redis-server here runs in cluster mode, one node owning all 16,384 slots
(two nodes, half each, where a test needs a key to live on another node),
so it refuses, as any cluster does, a command whose keys are in different
slots. The worker with the cluster setting applies a whole stream (vectors,
models, kept features for labels) through it; the same store serving
several users per script call is refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

from profiling.embedding_cache import text_key
from profiling.pipeline import Record, apply_batch
from profiling.profile import Profile, ProfileParams
from profiling.store import Erasure, Write, scored_index_key
from stream.devstack import LocalRedis, free_port
from stream.held_back import HeldBackLedger, LedgerChanges
from stream.interest_setup import RedisEmbeddingCache
from stream.model_setup import build_models, save_models, segment_report
from stream.preflight import StartupError
from stream.producing import send_records
from stream.redis_store import RedisProfileStore, connect
from stream.runner import run_worker
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator
from tests.conftest import SettingsFactory
from tests.integration.kafka_io import drain

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def cluster_redis() -> Iterator[LocalRedis]:
    with LocalRedis(cluster=True) as running:
        yield running


@pytest.fixture
async def cluster_client(cluster_redis: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    client = connect(cluster_redis.url, cluster=True)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


def view(user: str, event_id: str, offset: int) -> Record:
    body = {
        "event_id": event_id,
        "user_id": user,
        "type": "view",
        "ts": T0 + offset,
        "item_id": "i1",
        "title": "A novel",
    }
    return Record("behavior-events", 0, offset, user.encode(), orjson.dumps(body))


async def test_one_user_per_call_works_and_several_are_refused(
    cluster_client: aioredis.Redis,
) -> None:
    users = [f"u{i}" for i in range(20)]  # their hash tags spread over many slots
    records = [view(user, f"e-{user}", i) for i, user in enumerate(users)]
    mixed = RedisProfileStore(cluster_client, users_per_call=200)
    with pytest.raises((RedisClusterException, ResponseError), match=r"(?i)slot"):
        await apply_batch(records, mixed, ProfileParams(), lambda: T0 + 60_000)
    per_user = RedisProfileStore(cluster_client)  # a cluster client: one user per call
    result = await apply_batch(records, per_user, ProfileParams(), lambda: T0 + 60_000)
    assert result.outcomes["applied"] == len(users)
    assert (await per_user.read_profile("u7") or {})["events"] == "1"


async def test_a_user_id_with_braces_stays_in_one_slot(cluster_client: aioredis.Redis) -> None:
    """An id that starts with `}` gave an empty hash tag, each key a slot of its own: the
    cluster client refused every script call for the user, and the worker retried
    the batch for ever."""
    store = RedisProfileStore(cluster_client)
    users = ["}evil", "a}:x", "a", "{x}"]
    records = [view(user, f"e{i}", i) for i, user in enumerate(users)]
    result = await apply_batch(records, store, ProfileParams(), lambda: T0 + 60_000)
    assert result.outcomes["applied"] == len(users) and not result.dead_letters
    assert [(await store.read_profile(user) or {}).get("events") for user in users] == ["1"] * 4
    saved = Write(Profile("}evil", version=2, events=1, updated=T0), 1, (("p", b"1"),))
    assert await store.save([saved]) == []
    assert await store.erase("}evil", T0 + 120_000) is Erasure.ERASED
    assert await store.read_profile("}evil") is None
    assert await store.load_scored([("}evil", "p")]) == [None]


async def test_erase_removes_the_users_scored_features_on_the_cluster(
    cluster_client: aioredis.Redis,
) -> None:
    """Every key of an erase (profile, state, index, features) shares the user's slot."""
    store = RedisProfileStore(cluster_client)
    scored = (("e1", b"\x01"), ("e2", b"\x02"))
    users = [f"u{i}" for i in range(20)]
    writes = [Write(Profile(user, version=1, events=1, updated=T0), 0, scored) for user in users]
    assert await store.save(writes) == []
    assert await store.erase("u7", T0 + 60_000) is Erasure.ERASED
    assert await store.load_scored([("u7", "e1"), ("u7", "e2"), ("u8", "e2")]) == [
        None,
        None,
        b"\x02",
    ]
    assert await cluster_client.exists(scored_index_key("u7"), scored_index_key("u8")) == 1
    assert await store.read_profile("u7") is None
    assert await store.read_profile("u8") is not None


async def test_a_merge_moves_scored_features_across_slots(cluster_client: aioredis.Redis) -> None:
    store = RedisProfileStore(cluster_client)
    await store.save([Write(Profile("u7", version=1, events=1, updated=T0), 0, (("e1", b"\x01"),))])
    assert key_slot(b"{u7}") != key_slot(b"{u8}")
    await store.set_aside("u7", T0 + 60_000, "u8")
    assert await store.load_scored([("u7", "e1"), ("u8", "e1")]) == [None, b"\x01"]
    assert await store.merged_into(["u7", "u8"]) == {"u7": "u8"}


async def test_a_worker_applies_a_stream_through_the_cluster(
    make_settings: SettingsFactory, cluster_redis: LocalRedis, cluster_client: aioredis.Redis
) -> None:
    settings = await make_settings(
        partitions=3, redis_url=cluster_redis.url, redis_cluster=True, batch_max_events=300
    )
    shop = ShopGenerator(users=60, seed=3, start_ms=T0, end_ms=T0 + 3_600_000)
    pairs = list(shop.records(1500))
    await send_records(settings, pairs)
    stats = await drain(settings)
    assert stats.applied == len(pairs) and stats.dead_letters == 0
    assert stats.held_back_published > 0  # later batches held back, then handed off
    ledger = HeldBackLedger(cluster_client, settings.group_id)
    assert await ledger.read(range(3)) == ({0: {}, 1: {}, 2: {}}, {})  # all handed off
    users = {key.decode() for key, _ in pairs}
    store = RedisProfileStore(cluster_client)
    counted = 0
    for user in users:
        profile = await store.read_profile(user)
        assert profile is not None and "vec_long" in profile and "segment" in profile
        counted += int(profile["events"])
    assert counted == len(pairs)
    scored = [
        (key.decode(), orjson.loads(value)["event_id"])
        for key, value in pairs
        if orjson.loads(value)["type"] in ("purchase", "login")
    ]
    kept = await store.load_scored(scored)  # the label join's read: one MGET per slot
    assert scored and all(value is not None for value in kept)


@pytest.mark.parametrize("group", ["group-a", "shop}eu", "a}:1", "}"])
async def test_the_held_back_ledger_keeps_each_partition_in_a_slot_of_its_own(
    cluster_client: aioredis.Redis, group: str
) -> None:
    """A group id with a `}` ended every partition's hash tag there: one slot for all."""
    ledger = HeldBackLedger(cluster_client, group)
    slots = {key_slot(ledger.key(partition).encode()) for partition in range(6)}
    assert len(slots) == 6  # a slot each: a cluster spreads them, and one call serves one
    assert HeldBackLedger(cluster_client, "group-a").key(3) == "profiler:held-back:{group-a:3}"
    waiting = {p: {f"u{p}-{i}": 1000 * p + i for i in range(3)} for p in range(6)}
    await ledger.save(LedgerChanges(waiting=waiting))
    assert await ledger.read(range(6)) == (waiting, {})
    # u*-0 done; u*-1 done as due earlier than the ledger has it (noted since elsewhere).
    done = {p: {f"u{p}-0": 1000 * p, f"u{p}-1": 1000 * p} for p in range(6)}
    await ledger.save(LedgerChanges(done=done))
    left, _ = await ledger.read([2, 5])
    assert left == {p: {f"u{p}-1": 1000 * p + 1, f"u{p}-2": 1000 * p + 2} for p in (2, 5)}


async def test_the_shared_embedding_cache_spans_hash_slots(cluster_client: aioredis.Redis) -> None:
    cache = RedisEmbeddingCache(cluster_client)
    keys = [text_key("m", f"text {i}") for i in range(50)]  # no hash tag: many slots
    values = [bytes([i]) * 8 for i in range(50)]
    await cache.set_many(list(zip(keys, values, strict=True)), ttl_s=600)
    assert await cache.get_many([*keys, text_key("m", "absent")]) == [*values, None]


class _SlotlessNode(LocalRedis):
    """A cluster-mode redis-server that owns no slot yet (the fixture shares them out)."""

    def _own_every_slot(self) -> None:
        pass


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[tuple[LocalRedis, LocalRedis]]:
    """Two nodes, half of the slots each: a key of the other half is MOVED there."""
    with _SlotlessNode(cluster=True) as first, _SlotlessNode(cluster=True) as second:
        clients = [redis.Redis(port=first.port), redis.Redis(port=second.port)]
        clients[0].execute_command("CLUSTER ADDSLOTS", *range(8192))
        clients[1].execute_command("CLUSTER ADDSLOTS", *range(8192, 16_384))
        clients[0].execute_command("CLUSTER MEET", "127.0.0.1", second.port)
        deadline = time.monotonic() + 30
        while not all(
            c.cluster("INFO").get("cluster_state") == "ok" and len(c.cluster("NODES")) == 2
            for c in clients
        ):
            assert time.monotonic() < deadline, "the two nodes never formed a cluster"
            time.sleep(0.05)
        for client in clients:
            client.close()
        yield first, second


async def test_segment_report_reads_every_node_of_a_cluster(
    two_node_cluster: tuple[LocalRedis, LocalRedis],
) -> None:
    """`profiler segments` read through a plain client: from a node without the
    snapshot's slot it failed (MOVED), from the other it counted that node's users."""
    users = [f"u{i}" for i in range(20)]
    assert {key_slot(f"{{{user}}}".encode()) < 8192 for user in users} == {True, False}
    for node in two_node_cluster:
        settings = Settings(
            redis_url=node.url, redis_cluster=True, model_secret="k" * 32, group_id="g"
        )
        client = connect(node.url, cluster=True)
        try:
            await client.flushall()
            models = build_models(settings)
            assert models is not None and await save_models(models, client, settings)
            profiles = [Profile(u, version=1, events=1, updated=T0, segment=1) for u in users]
            writes = [Write(profile, 0) for profile in profiles]
            assert await RedisProfileStore(client).save(writes) == []
        finally:
            await client.aclose()
        report = await segment_report(settings)
        assert {segment: size for segment, size, _ in report if size} == {1: len(users)}


async def unreachable_cluster(make_settings: SettingsFactory) -> Settings:
    """Settings of a worker whose cluster went away after the check before its start: the
    preflight is passed by, as a cluster lost between the two would."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    return await make_settings(redis_url=url, redis_cluster=True, encoder_model="none")


async def test_a_cluster_unreachable_as_profiler_run_starts_the_worker_is_one_line(
    make_settings: SettingsFactory,
) -> None:
    """The cluster client raises RedisClusterException, no RedisError, when no node
    answers: `profiler run` printed its traceback instead of the start-up error line."""
    settings = await unreachable_cluster(make_settings)
    with pytest.raises(StartupError, match=r"^Redis Cluster cannot be connected"):
        await run_worker(settings)


async def test_a_cluster_unreachable_as_the_faust_app_starts_the_worker_is_one_line(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same in the Faust app's service: Faust logged the crash's traceback."""
    from stream import app

    async def passed(settings: Settings) -> None:
        """The check before the start found the cluster; it went away since."""

    monkeypatch.setattr(app, "settings", await unreachable_cluster(make_settings))
    monkeypatch.setattr(app, "check_servers", passed)
    service = app.EventPathService()
    try:
        with caplog.at_level(logging.ERROR, logger="profiler.app"), pytest.raises(SystemExit):
            await service.on_start()
    finally:
        await service.on_stop()
    (said,) = [r.getMessage() for r in caplog.records if r.name == "profiler.app"]
    assert said.startswith("cannot start the worker: Redis Cluster cannot be connected"), said
