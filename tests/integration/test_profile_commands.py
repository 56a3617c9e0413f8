"""`profile-commands` through a worker, on the real broker and redis-server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from profiling.store import Erasure, erased_key, state_key
from stream import metrics
from stream.producing import send_records
from stream.redis_store import RedisProfileStore
from stream.settings import Settings
from stream.worker import BatchWorker, wall_clock_ms
from tests.integration.kafka_io import drain, read_topic
from tests.integration.poison import fail_on_poison
from tests.schemas import validator

HOUR_MS = 3_600_000


def event(event_id: str, user: str, kind: str, ts: int) -> tuple[bytes, bytes]:
    body: dict[str, object] = {"event_id": event_id, "user_id": user, "type": kind, "ts": ts}
    if kind == "purchase":
        body |= {"amount": 25.0, "card_fp": f"card-{user}", "device_id": "d1", "country": "DE"}
    if kind == "view":
        body |= {"item_id": "sku-1", "category": "shoes"}
    return user.encode(), orjson.dumps(body)


async def user_keys(client: aioredis.Redis, user: str) -> set[bytes]:
    return {key async for key in client.scan_iter(match=f"*{{{user}}}*", count=1000)}


def marker_keys(user: str) -> set[bytes]:
    """All an erase leaves of a user: the erasure marker, as the state and apart from it."""
    return {state_key(user).encode(), erased_key(user).encode()}


async def test_erase_removes_a_user_publishes_a_tombstone_and_suppresses_older_events(
    topics: Settings,
) -> None:
    now = wall_clock_ms()
    history = [
        event(f"{user}-{i}", user, kind, now - 2 * HOUR_MS + i * 60_000)
        for user in ("alice", "bob")
        for i, kind in enumerate(["login", "view", "purchase", "view", "login"])
    ]
    await send_records(topics, history)
    first = await drain(topics)
    assert first.applied == 10
    client = aioredis.Redis.from_url(topics.redis_url)
    try:
        alice_before = await user_keys(client, "alice")
        assert any(key.startswith(b"profile-scored:") for key in alice_before)
        bob_before = await user_keys(client, "bob")

        erase = orjson.dumps({"command": "erase", "user_id": "alice"})
        bad = orjson.dumps({"command": "erase"})
        await send_records(topics, [(b"alice", erase), (b"alice", bad)], topics.topic_commands)
        erased_stats = await drain(topics)
        assert erased_stats.summary()["commands"] == {"erase erased": 1, "invalid dead_lettered": 1}
        assert await user_keys(client, "alice") == marker_keys("alice")
        assert await user_keys(client, "bob") == bob_before

        # Events of alice from before the erase (late) and after it.
        after = wall_clock_ms() + 1_000
        late = [event("alice-late", "alice", "view", now - HOUR_MS)]
        fresh = [event("alice-new", "alice", "view", after)]
        await send_records(topics, late + fresh)
        rebuilt_stats = await drain(topics)
        assert (rebuilt_stats.suppressed, rebuilt_stats.applied) == (1, 1)
        profile = await client.hgetall("profile:{alice}")
        assert profile[b"version"] == b"1" and profile[b"events"] == b"1"
        assert profile[b"first_seen"] == str(after).encode()
    finally:
        await client.aclose()

    updates = await read_topic(topics.kafka_bootstrap, topics.topic_updates)
    alice = [record.value for record in updates if record.key == b"alice"]
    tombstone = alice.index(None)
    assert tombstone > 0 and alice.count(None) == 1
    schema = validator("profile_update.v1")
    before, since = alice[:tombstone], alice[tombstone + 1 :]
    assert [orjson.loads(body)["version"] for body in since] == [1]
    assert all(schema.is_valid(orjson.loads(body)) for body in before + since)

    letters = [
        orjson.loads(r.value) for r in await read_topic(topics.kafka_bootstrap, topics.topic_dlq)
    ]
    assert [(letter["error"], letter["topic"]) for letter in letters] == [
        ("invalid_command", topics.topic_commands)
    ]


async def test_a_replayed_erase_keeps_the_profile_rebuilt_since(topics: Settings) -> None:
    """The erase is committed late (a crash): replayed, it must not erase newer events."""
    now = wall_clock_ms()
    await send_records(topics, [event("a-1", "alice", "view", now - HOUR_MS)])
    erase = orjson.dumps({"command": "erase", "user_id": "alice"})
    await send_records(topics, [(b"alice", erase)], topics.topic_commands)
    await drain(topics)
    await send_records(topics, [event("a-2", "alice", "view", wall_clock_ms() + 1_000)])
    await drain(topics)

    replay = topics.model_copy(update={"group_id": f"{topics.group_id}-replay"})
    stats = await drain(replay)  # a new group: every record again, the erase included
    assert stats.summary()["commands"] == {"erase repeated": 1}
    assert (stats.replayed, stats.applied) == (2, 0)  # below the rebuilt profile's watermark
    updates = await read_topic(topics.kafka_bootstrap, topics.topic_updates)
    alice = [record.value for record in updates if record.key == b"alice"]
    # The replayed tombstone is followed by the rebuilt profile, never left last.
    assert alice[-1] is not None and orjson.loads(alice[-1])["version"] == 1
    assert alice.count(None) == 2
    client = aioredis.Redis.from_url(topics.redis_url)
    try:
        profile = await client.hgetall("profile:{alice}")
    finally:
        await client.aclose()
    assert profile[b"version"] == b"1" and profile[b"events"] == b"1"


async def test_merge_folds_a_visitor_into_an_account(topics: Settings) -> None:
    now = wall_clock_ms()
    visits = [
        event(f"anon-{i}", "anon-7", kind, now - 5 * HOUR_MS + i * 60_000)
        for i, kind in enumerate(["view", "view", "purchase", "view"])
    ]
    account = [event(f"k-{i}", "k", "view", now - HOUR_MS + i) for i in range(3)]
    await send_records(topics, visits + account)
    await drain(topics)
    merge = orjson.dumps({"command": "merge", "from_user_id": "anon-7", "user_id": "k"})
    await send_records(topics, [(b"k", merge)], topics.topic_commands)
    stats = await drain(topics)
    assert stats.summary()["commands"] == {"merge merged": 1}
    client = aioredis.Redis.from_url(topics.redis_url)
    try:
        assert await user_keys(client, "anon-7") == marker_keys("anon-7")
        merged = await client.hgetall("profile:{k}")
        assert (merged[b"events"], merged[b"count:view"], merged[b"orders"]) == (b"7", b"6", b"1")
        assert len(merged[b"vec_long"]) == 4 * 384 and merged[b"spend"] == b"25.0"
        assert merged[b"first_seen"] == str(now - 5 * HOUR_MS).encode()
    finally:
        await client.aclose()
    updates = await read_topic(topics.kafka_bootstrap, topics.topic_updates)
    assert [r.value for r in updates if r.key == b"anon-7"][-1] is None
    last = orjson.loads([r.value for r in updates if r.key == b"k"][-1])
    validator("profile_update.v1").validate(last)
    assert (last["version"], last["events"], last["orders"]) == (2, 7, 1)


async def test_a_visitors_event_read_after_the_merge_reaches_the_account(
    topics: Settings,
) -> None:
    now = wall_clock_ms()
    visits = [event(f"anon-{i}", "anon-9", "view", now - 2 * HOUR_MS + i) for i in range(2)]
    await send_records(topics, [*visits, event("k-0", "k", "view", now - HOUR_MS)])
    await drain(topics)
    merge = orjson.dumps({"command": "merge", "from_user_id": "anon-9", "user_id": "k"})
    await send_records(topics, [(b"k", merge)], topics.topic_commands)
    await drain(topics)
    # Sent before the merge by the shop, read after it here (a backlog, another topic).
    await send_records(topics, [event("anon-late", "anon-9", "purchase", now - HOUR_MS // 2)])
    stats = await drain(topics)  # forwards it, then reads it back under the account
    assert (stats.forwarded, stats.applied, stats.suppressed) == (1, 1, 0)
    client = aioredis.Redis.from_url(topics.redis_url)
    try:
        assert await user_keys(client, "anon-9") == marker_keys("anon-9")
        account = await client.hgetall("profile:{k}")
        assert (account[b"events"], account[b"orders"], account[b"version"]) == (b"4", b"1", b"3")
    finally:
        await client.aclose()
    records = await read_topic(topics.kafka_bootstrap, topics.topic_events)
    forwarded = [orjson.loads(r.value) for r in records if r.key == b"k"][-1]
    assert (forwarded["event_id"], forwarded["user_id"], forwarded["forwarded_from"]) == (
        "anon-late",
        "k",
        "anon-9",
    )


async def test_a_command_the_worker_fails_on_is_dead_lettered_and_events_applied(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in carrying out a command: its record becomes an `internal_error` dead
    letter, whole, and the batch's events and other commands are carried out (one by one)."""
    real = RedisProfileStore.erase

    async def failing(self: RedisProfileStore, user_id: str, at_ms: int) -> Erasure:
        if user_id == "alice":
            raise ValueError(f"a bug erasing {user_id}")
        return await real(self, user_id, at_ms)

    monkeypatch.setattr(RedisProfileStore, "erase", failing)
    now = wall_clock_ms()
    await send_records(topics, [event(f"b-{i}", "bob", "view", now - i) for i in range(3)])
    erase = orjson.dumps({"command": "erase", "user_id": "alice"})
    other = orjson.dumps({"command": "erase", "user_id": "carol"})
    await send_records(topics, [(b"alice", erase), (b"carol", other)], topics.topic_commands)
    stats = await drain(topics)
    assert stats.applied == 3
    # carol's, carried out (again, when it came before alice's in the failed batch)
    assert stats.summary()["commands"] in ({"erase absent": 1}, {"erase repeated": 1})
    client = aioredis.Redis.from_url(topics.redis_url)
    try:
        assert await user_keys(client, "carol") == marker_keys("carol")
    finally:
        await client.aclose()
    (letter,) = [
        orjson.loads(r.value) for r in await read_topic(topics.kafka_bootstrap, topics.topic_dlq)
    ]
    validator("dead_letter.v1").validate(letter)
    assert (letter["error"], letter["detail"]) == (
        "internal_error",
        "ValueError: a bug erasing alice",
    )
    assert (letter["topic"], letter["value"]) == (topics.topic_commands, erase.decode())


def erase_counts() -> tuple[float, float]:
    erased = metrics.COMMANDS.labels("erase", "erased")._value.get()
    return erased, metrics.COMMANDS.labels("erase", "repeated")._value.get()


async def test_an_erase_in_a_batch_whose_fold_fails_on_a_bug_counts_as_erased_once(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fold failed after the batch's erase was carried out; applied user by user, the
    batch carried it out again, found its own marker, and counted it `repeated`."""
    now = wall_clock_ms()
    await send_records(topics, [event("a-0", "alice", "view", now - HOUR_MS)])
    await drain(topics)
    fail_on_poison(monkeypatch, "fold")
    await send_records(topics, [event("p-0", "poison", "login", now)])
    erase = orjson.dumps({"command": "erase", "user_id": "alice"})
    await send_records(topics, [(b"alice", erase)], topics.topic_commands)
    worker = BatchWorker(topics)
    await worker.start()
    before = erase_counts()
    try:
        records: list[Any] = []
        while len(records) < 2:  # the event and the command, in one batch
            batch = await worker.consumer.getmany(timeout_ms=200)
            records += [record for part in batch.values() for record in part]
        result = await worker.process(records)
    finally:
        await worker.close()
    assert result.errors == {"internal_error": 1}  # poison's event: the batch went apart
    assert result.commands == {("erase", "erased"): 1}
    assert result.erased == ["alice"]
    after = erase_counts()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)


async def test_an_erase_in_a_batch_whose_write_fails_on_a_bug_counts_as_erased_once(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same when the write fails: the batch is applied apart after its commands."""
    now = wall_clock_ms()
    await send_records(topics, [event("a-0", "alice", "view", now - HOUR_MS)])
    await drain(topics)
    fail_on_poison(monkeypatch, "write")
    await send_records(topics, [event("p-0", "poison", "login", now)])
    erase = orjson.dumps({"command": "erase", "user_id": "alice"})
    await send_records(topics, [(b"alice", erase)], topics.topic_commands)
    before = erase_counts()
    stats = await drain(topics)
    assert stats.errors == {"internal_error": 1}
    assert stats.summary()["commands"] == {"erase erased": 1}
    after = erase_counts()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)
