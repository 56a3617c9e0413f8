"""The batch worker end to end on the real broker and the real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from profiling import pipeline
from profiling.errors import ProfilerError
from profiling.events import Event, decode_event
from profiling.profile import Profile
from profiling.store import Write
from stream import metrics, redis_store
from stream import worker as worker_module
from stream.devstack import (
    COMPACT_HASH_VALUE_BYTES,
    LocalBroker,
    create_topics,
    default_topics,
    free_port,
)
from stream.held_back import HeldBackLedger, LedgerChanges
from stream.kafka import TopicGoneError
from stream.producing import send_records
from stream.settings import Settings
from stream.synthetic_shop import RATES, ShopGenerator
from stream.worker import BatchWorker, next_offsets, wall_clock_ms
from tests.corpus import CASES
from tests.integration.kafka_io import (
    committed_offsets,
    drain,
    end_offsets,
    read_topic,
    wait_until,
)
from tests.integration.poison import fail_on_poison
from tests.integration.test_metrics import take
from tests.schemas import validator

HOUR_MS = 3_600_000


def shop_records(n: int, malformed: float = 0.02, duplicates: float = 0.02, seed: int = 3):
    now = wall_clock_ms()
    shop = ShopGenerator(users=300, seed=seed, start_ms=now - 3 * HOUR_MS, end_ms=now - 60_000)
    return list(shop.records(n, malformed, duplicates))


def expected_profiles(records: Sequence[tuple[bytes | None, bytes]]) -> dict[str, dict]:
    """Recount each user's aggregates from the distinct valid events."""
    seen: set[str] = set()
    totals: dict[str, dict] = defaultdict(lambda: {"events": 0, "counts": Counter(), "spend": 0.0})
    now = wall_clock_ms()
    for key, value in records:
        event = decode_event(value, now)
        if not isinstance(event, Event) or key != event.user_id.encode():
            continue
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        user = totals[event.user_id]
        user["events"] += 1
        user["counts"][event.type] += 1
        if event.type == "purchase":
            user["spend"] += event.amount or 0.0
    return dict(totals)


async def stored_profiles(url: str) -> dict[str, dict[str, str]]:
    """Every profile's text fields (the binary vectors left out)."""
    client = aioredis.Redis.from_url(url)
    try:
        profiles = {}
        async for key in client.scan_iter(match="profile:{*", count=1000):
            fields = await client.hgetall(key)
            profiles[key.decode()[len("profile:{") : -1]] = {
                name.decode(): value.decode()
                for name, value in fields.items()
                if not name.startswith(b"vec_")
            }
        return profiles
    finally:
        await client.aclose()


async def snapshot(url: str) -> dict[str, object]:
    """Every key and value in Redis, for before/after comparisons."""
    client = aioredis.Redis.from_url(url)
    try:
        dump = {}
        async for key in client.scan_iter(count=1000):
            kind = await client.type(key)
            if kind == b"hash":
                dump[key] = await client.hgetall(key)
            elif kind == b"zset":
                dump[key] = await client.zrange(key, 0, -1, withscores=True)
            else:
                dump[key] = await client.get(key)
        return dump
    finally:
        await client.aclose()


def assert_profiles_match(stored: dict[str, dict[str, str]], expected: dict[str, dict]) -> None:
    assert stored.keys() == expected.keys()
    for user, want in expected.items():
        got = stored[user]
        assert int(got["events"]) == want["events"], user
        counts = {k[6:]: int(v) for k, v in got.items() if k.startswith("count:")}
        assert counts == dict(want["counts"]), user
        assert math.isclose(float(got["spend"]), want["spend"], rel_tol=1e-9, abs_tol=1e-4)


async def test_end_to_end_shop_with_bad_records_and_duplicates(topics: Settings) -> None:
    records = shop_records(4000)
    await send_records(topics, records)
    stats = await drain(topics)

    expected = expected_profiles(records)
    assert_profiles_match(await stored_profiles(topics.redis_url), expected)
    n_valid = sum(u["events"] for u in expected.values())
    assert stats.applied == n_valid
    assert stats.records == len(records)

    letters = await read_topic(topics.kafka_bootstrap, topics.topic_dlq)
    assert len(letters) == stats.dead_letters == len(records) - n_valid - stats.duplicates
    dlq_schema = validator("dead_letter.v1")
    for letter in letters:
        assert dlq_schema.is_valid(orjson.loads(letter.value))

    updates = await read_topic(topics.kafka_bootstrap, topics.topic_updates)
    update_schema = validator("profile_update.v1")
    assert {u.key.decode() for u in updates} == expected.keys()  # every new user announced
    for update in updates:
        assert update_schema.is_valid(orjson.loads(update.value))

    committed = await committed_offsets(topics)
    assert committed == await end_offsets(topics, topics.topic_events)


async def test_every_malformed_corpus_case_is_dead_lettered_and_the_worker_goes_on(
    topics: Settings,
) -> None:
    records = []
    now = wall_clock_ms()
    for case in CASES:
        event = decode_event(case.raw, now)
        key = event.user_id.encode() if isinstance(event, Event) else b"corpus-user"
        records.append((key, case.raw))
    after = {"event_id": "after-all", "user_id": "last", "type": "login", "ts": wall_clock_ms()}
    records.append((b"last", orjson.dumps(after)))
    await send_records(topics, records, max_request_size=4 << 20)
    await drain(topics)

    letters = [
        orjson.loads(r.value) for r in await read_topic(topics.kafka_bootstrap, topics.topic_dlq)
    ]
    invalid = [case for case in CASES if case.error is not None]
    assert len(letters) == len(invalid)
    assert Counter(letter["error"] for letter in letters) == Counter(c.error for c in invalid)
    by_offset = {letter["offset"]: letter for letter in letters}
    assert len(by_offset) == len(letters)
    stored = await stored_profiles(topics.redis_url)
    assert "last" in stored  # nothing stopped the worker
    valid_users = {e.user_id for c in CASES if isinstance(e := decode_event(c.raw, now), Event)}
    assert valid_users <= stored.keys()


async def drain_with_poison(settings: Settings, seed: int, detail: str) -> None:
    """Drain a shop with a user "poison" in the middle, whose events the worker fails on.

    Every other user is applied in full, the poison user's events are
    `internal_error` dead letters (the records intact, for a replay after the
    fix) with the exception as the detail, and every offset is committed.
    """
    records = shop_records(600, malformed=0, duplicates=0, seed=seed)
    poison = [
        (b"poison", orjson.dumps({"event_id": f"poison-{i}", "user_id": "poison",
                                  "type": "login", "ts": wall_clock_ms()}))
        for i in range(3)
    ]  # fmt: skip
    await send_records(settings, records[:250] + poison + records[250:])
    stats = await drain(settings)

    assert_profiles_match(await stored_profiles(settings.redis_url), expected_profiles(records))
    dlq = await read_topic(settings.kafka_bootstrap, settings.topic_dlq)
    letters = [orjson.loads(r.value) for r in dlq]
    assert sorted(letter["value"] for letter in letters) == sorted(v.decode() for _, v in poison)
    for letter in letters:
        assert letter["error"] == "internal_error"
        assert letter["detail"].startswith(detail), letter["detail"]
        validator("dead_letter.v1").validate(letter)
    assert stats.dead_letters == len(poison)
    assert await committed_offsets(settings) == await end_offsets(settings, settings.topic_events)


@pytest.mark.parametrize(
    ("error", "seed"),
    [
        (ValueError("a bug in the fold"), 9),
        # Said not retriable: retried, it stalled the worker on that batch for good.
        (ProfilerError("a contract the fold cannot meet"), 12),
    ],
    ids=["bug", "not-retriable"],
)
async def test_a_user_the_fold_fails_on_is_dead_lettered_and_the_rest_applied(
    topics: Settings, monkeypatch: pytest.MonkeyPatch, error: Exception, seed: int
) -> None:
    """A bug, or an engine error that cannot pass, raised on some valid events: the worker
    applies the rest and goes on.

    The failure is injected into the aggregates fold for one user; the batch is
    then applied user by user.
    """
    fail_on_poison(monkeypatch, "fold", error)
    await drain_with_poison(topics, seed, f"{type(error).__name__}: {error}")


@pytest.mark.parametrize("batch", [40, 5000])
async def test_a_user_whose_write_fails_is_dead_lettered_and_the_rest_applied(
    topics: Settings, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """The same for a bug in the write half, before anything is sent.

    With 40-record batches, the next batch is folded while that write fails,
    from profiles never sent: it is folded again once the failed batch is
    applied apart, and no event of the users they share is lost.
    """
    fail_on_poison(monkeypatch, "write")
    settings = topics.model_copy(update={"batch_max_events": batch})
    await drain_with_poison(settings, 10, "ValueError: a bug in the write")


async def test_a_user_whose_redis_key_redis_refuses_is_dead_lettered_and_the_rest_applied(
    topics: Settings,
) -> None:
    """Redis refuses a command on a key of the wrong type every time: not a failure to
    retry (that stalled every partition of the worker), but one to apply apart."""
    client = aioredis.Redis.from_url(topics.redis_url)
    await client.rpush(redis_store.state_key("poison"), "a list, not a string")
    await client.aclose()
    await drain_with_poison(topics, 11, "ResponseError: ")


async def test_dead_letters_of_every_topic_are_counted_by_error_code(make_settings) -> None:
    settings = await make_settings(partitions=1, encoder_model="none")
    await send_records(settings, [(b"u", b'{"command":"rename","user_id":"u"}')],
                       topic=settings.topic_commands)  # fmt: skip
    await send_records(settings, [(b"u", b'{"label": 7}')], topic=settings.topic_labels)
    await send_records(settings, [(b"u", b"not json")])
    events = metrics.EVENTS.labels("unknown", "dead_lettered")
    before = events._value.get()
    stats = await drain(settings, idle_s=2.0)
    assert stats.errors == {"invalid_command": 1, "invalid_label": 1, "invalid_json": 1}
    assert stats.dead_letters == 3
    assert events._value.get() - before == 1  # the event: labels and commands count apart


async def test_spend_is_counted_in_one_currency_and_money_without_a_rate_is_told(
    make_settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The shop sells in eight currencies; the worker has rates for all but the yen."""
    rates = {code: rate for code, rate in RATES.items() if code not in ("USD", "JPY")}
    settings = await make_settings(encoder_model="none", currency_rates=rates)
    records = shop_records(3000, malformed=0, duplicates=0, seed=8)
    expected, purchases = expected_profiles(records), Counter[str]()
    for user in expected.values():
        user["spend"] = 0.0
    for _, value in records:
        event = decode_event(value, wall_clock_ms())
        assert isinstance(event, Event)
        if event.type == "purchase" and event.amount is not None:
            purchases[event.currency] += 1
            if event.currency != "JPY":
                expected[event.user_id]["spend"] += event.amount / RATES[event.currency]
    assert purchases["JPY"] and purchases["EUR"], "the shop's mix should hold both"
    labels = {"other"} | purchases.keys()  # the yen, without a rate, counted as other
    counted = {
        (code, handling): metrics.FOREIGN_PURCHASES.labels(code, handling)._value.get()
        for code in labels
        for handling in ("converted", "left_out")
    }
    await send_records(settings, records)
    with caplog.at_level(logging.WARNING, logger="profiler.worker"):
        await drain(settings)

    assert_profiles_match(await stored_profiles(settings.redis_url), expected)
    for (code, handling), before in counted.items():
        now = metrics.FOREIGN_PURCHASES.labels(code, handling)._value.get()
        if handling == "left_out":
            want = purchases["JPY"] if code == "other" else 0
        else:
            want = purchases[code] if code not in ("USD", "JPY", "other") else 0
        assert now - before == want, (code, handling)
    told = [r.getMessage() for r in caplog.records if "PROFILER_CURRENCY_RATES" in r.getMessage()]
    assert len(told) == 1 and told[0].startswith("purchases in JPY: no rate"), told


async def test_resent_events_are_applied_once(topics: Settings) -> None:
    records = shop_records(600, malformed=0, duplicates=0, seed=5)
    await send_records(topics, records)
    await drain(topics)
    before = await stored_profiles(topics.redis_url)
    await send_records(topics, records[::3])  # a producer retrying a third of its sends
    stats = await drain(topics)
    assert stats.duplicates == len(records[::3])
    assert stats.applied == 0
    assert await stored_profiles(topics.redis_url) == before


class Crash(Exception):
    """The process dying, as far as the worker's batch is concerned."""


class CrashBeforeCommit(BatchWorker):
    """A worker that dies after the Redis write and the producer acks, before the commit."""

    async def _commit(self, offsets: object) -> None:
        raise Crash("killed before the offset commit")


class TopicDeletedBeforeCommit(BatchWorker):
    """A worker whose events topic is deleted on the broker as its first batch is committed."""

    deleted = False

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not self.deleted:
            self.deleted = True
            admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([self.settings.topic_events])
            finally:
                await admin.close()
        await super()._commit(offsets)


async def test_a_worker_whose_topic_is_deleted_stops_with_an_error_naming_it(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka retries a commit to a deleted topic for ever (it marks the error retriable):
    the worker sat on its batch for as long as it ran, logging aiokafka's errors. It now
    stops with an error naming the topic, the batch uncommitted."""
    monkeypatch.setattr(worker_module, "COMMIT_CHECK_S", 1.0)
    await send_records(topics, shop_records(300, seed=5))
    worker = TopicDeletedBeforeCommit(topics)
    await worker.start()
    try:
        with pytest.raises(TopicGoneError, match=f"topic {topics.topic_events} is no longer"):
            await asyncio.wait_for(worker.run(), 30)
    finally:
        await worker.close()
    assert worker.deleted
    assert worker.stats.last_commit_at is None and worker.stats.records == 0


async def test_batch_replayed_after_a_crash_changes_nothing(topics: Settings) -> None:
    records = shop_records(1500, malformed=0.01, duplicates=0.01, seed=9)
    await send_records(topics, records)
    with pytest.raises(Crash):
        await drain(topics, worker=CrashBeforeCommit(topics))
    assert set((await committed_offsets(topics)).values()) == {None}
    before = await snapshot(topics.redis_url)
    updates_before = await read_topic(topics.kafka_bootstrap, topics.topic_updates)
    assert before

    stats = await drain(topics)  # the group's next worker replays from the start
    assert stats.replayed > 0
    assert stats.applied == 0
    after = await snapshot(topics.redis_url)
    assert after == before
    # Change messages of the crashed batch are published again, with the same versions.
    updates = await read_topic(topics.kafka_bootstrap, topics.topic_updates)
    first = {(u.key, orjson.loads(u.value)["version"]) for u in updates_before}
    again = {(u.key, orjson.loads(u.value)["version"]) for u in updates[len(updates_before) :]}
    assert again and again <= first


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_batches_are_consumed(make_settings, codec: str) -> None:
    settings = await make_settings(partitions=2)
    records = shop_records(500, malformed=0, duplicates=0, seed=11)
    await send_records(settings, records, compression_type=codec)
    stats = await drain(settings)
    assert stats.applied == len(records)
    assert_profiles_match(await stored_profiles(settings.redis_url), expected_profiles(records))


async def test_key_must_be_the_user_id(topics: Settings) -> None:
    event = {"event_id": "k1", "user_id": "alice", "type": "login", "ts": wall_clock_ms()}
    await send_records(topics, [(b"bob", orjson.dumps(event)), (None, orjson.dumps(event))])
    stats = await drain(topics)
    assert stats.errors == Counter({"key_mismatch": 2})


async def test_a_label_whose_key_is_not_its_user_id_is_dead_lettered(topics: Settings) -> None:
    """Events and commands refuse a key that is not their user_id; a label with another
    key, or none, was learnt as if it had its user's."""
    label = {"event_id": "k1", "user_id": "alice", "label": 1, "ts": wall_clock_ms()}
    records = [(b"bob", orjson.dumps(label)), (None, orjson.dumps(label))]
    await send_records(topics, records, topic=topics.topic_labels)
    stats = await drain(topics)
    assert stats.errors == Counter({"key_mismatch": 2})
    assert stats.labels == Counter({"invalid": 2})
    letters = await read_topic(topics.kafka_bootstrap, topics.topic_dlq)
    assert sorted(letter.key or b"" for letter in letters) == [b"", b"bob"]
    for letter in letters:
        body = orjson.loads(letter.value)
        validator("dead_letter.v1").validate(body)
        assert body["error"] == "key_mismatch" and body["topic"] == topics.topic_labels


@pytest.mark.parametrize("limit", [64, COMPACT_HASH_VALUE_BYTES])
async def test_a_worker_with_vectors_warns_when_redis_would_spill_its_profiles(
    topics: Settings, caplog: pytest.LogCaptureFixture, limit: int
) -> None:
    client = aioredis.Redis.from_url(topics.redis_url)
    await client.config_set("hash-max-ziplist-value", limit)
    try:
        worker = BatchWorker(topics)  # the hashing encoder: 384-d, 1,536-byte vectors
        with caplog.at_level(logging.WARNING, logger="profiler.worker"):
            await worker.start()
        await worker.close()
    finally:
        await client.config_set("hash-max-ziplist-value", COMPACT_HASH_VALUE_BYTES)
        await client.aclose()
    warned = "set hash-max-listpack-value 2048" in caplog.text
    assert warned == (limit < 1536)


async def watch_fetching(
    settings: Settings, records: Sequence[tuple[bytes | None, bytes]]
) -> list[tuple[str, set[TopicPartition], set[TopicPartition]]]:
    """Drain `records`; at each profile load and save: (step, paused, owned partitions)."""
    await send_records(settings, records)
    worker = BatchWorker(settings)
    seen: list[tuple[str, set[TopicPartition], set[TopicPartition]]] = []
    load, save = worker.store.load, worker.store.save

    async def watched_load(users: Sequence[str], **how: bool) -> dict[str, Profile]:
        seen.append(("load", worker.consumer.paused(), worker.consumer.assignment()))
        return await load(users, **how)

    async def watched_save(writes: Sequence[Write]) -> list[str]:
        seen.append(("save", worker.consumer.paused(), worker.consumer.assignment()))
        return await save(writes)

    worker.store.load, worker.store.save = watched_load, watched_save
    stats = await drain(settings, worker=worker)
    assert stats.applied == len(records)
    assert not worker.consumer.paused()
    return seen


async def test_partitions_are_paused_while_a_batch_is_applied_until_its_write(
    topics: Settings,
) -> None:
    """The next fetch waits for the write: it then brings what arrived during the batch."""
    seen = await watch_fetching(topics, shop_records(300, malformed=0, duplicates=0, seed=13))
    assert {step for step, _, _ in seen} == {"load", "save"}
    for step, paused, owned in seen:
        assert owned
        assert paused == (owned if step == "load" else set()), step


async def test_a_full_batch_leaves_the_consumer_fetching_ahead(make_settings) -> None:
    """A backlog: the next batch is fetched while this one is applied."""
    settings = await make_settings(batch_max_events=50)
    seen = await watch_fetching(settings, shop_records(600, malformed=0, duplicates=0, seed=13))
    assert [paused for step, paused, _ in seen if step == "load"].count(set()) >= 6


def last_messages(updates: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Each user's change message of the highest version (what a consumer keeps)."""
    last: dict[str, dict[str, Any]] = {}
    for update in updates:
        body = orjson.loads(update.value)
        if body["version"] >= last.get(body["user_id"], {"version": -1})["version"]:
            last[body["user_id"]] = body
    return last


async def assert_every_last_message_is_the_stored_profile(settings: Settings) -> None:
    """No user's last change waits unpublished: their last message is Redis's profile."""
    updates = await read_topic(settings.kafka_bootstrap, settings.topic_updates)
    last = last_messages(updates)
    stored = await stored_profiles(settings.redis_url)
    assert last.keys() == stored.keys()
    behind = {
        user: (last[user]["version"], fields["version"])
        for user, fields in stored.items()
        if (last[user]["version"], last[user]["events"])
        != (int(fields["version"]), int(fields["events"]))
    }
    assert not behind, (
        f"{len(behind)} users' last message is behind Redis: {list(behind.items())[:5]}"
    )


def views(users: Sequence[str], round_: int, now: int) -> list[tuple[bytes, bytes]]:
    """One view per user, event ids unique per round."""
    records = []
    for user in users:
        body = {"event_id": f"{user}-{round_}", "user_id": user, "type": "view", "ts": now - 1000,
                "item_id": f"item{round_}", "category": "shoes"}  # fmt: skip
        records.append((user.encode(), orjson.dumps(body)))
    return records


async def running(settings: Settings) -> tuple[BatchWorker, asyncio.Task[Any]]:
    """A started worker and the task running it."""
    worker = BatchWorker(settings)
    await worker.start()
    return worker, asyncio.create_task(worker.run())


async def published_then_counted(settings: Settings, users: Sequence[str]) -> None:
    """A view per user, published at once (new users); then another, a counters-only
    change the heartbeat holds back."""
    await send_records(settings, views(users, 1, wall_clock_ms()))
    await wait_for_messages(settings, len(users))
    await send_records(settings, views(users, 2, wall_clock_ms()))


async def test_held_back_changes_are_published_once_due_without_further_events(
    make_settings,
) -> None:
    """A user's counters-only change is held back by the heartbeat, then published while the
    worker runs, though the user sends nothing more."""
    settings = await make_settings(partitions=2, heartbeat_s=3.0)
    users = [f"quiet-{i}" for i in range(8)]
    worker, run = await running(settings)
    try:
        await published_then_counted(settings, users)
        await wait_until(lambda: worker.stats.applied >= 2 * len(users), 15, "round 2 applied")
        assert worker.stats.changes_published == len(users)  # held back by the heartbeat
        assert metrics.REGISTRY.get_sample_value("profiler_held_back_users") == len(users)
        updates = await wait_for_messages(settings, 2 * len(users))
        # Counted once the messages are acked, which may be after a reader sees them.
        await wait_until(lambda: worker.stats.held_back_published >= len(users), 10, "counted")
        assert worker.stats.held_back_published == len(users)
        assert metrics.REGISTRY.get_sample_value("profiler_held_back_users") == 0
        assert {body["events"] for body in last_messages(updates).values()} == {2}
        assert all("count:view" in body["changed"] for body in last_messages(updates).values())
    finally:
        worker.request_stop()
        await asyncio.wait_for(run, 30)
        await worker.close()
    await assert_every_last_message_is_the_stored_profile(settings)


async def test_a_stopping_worker_hands_off_the_changes_it_held_back(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every user held back is published as the worker stops, a chunk of users at a time
    (15,000 users read at once took about 100 MiB more of the worker)."""
    users = [f"quiet-{i}" for i in range(8)]
    await send_records(topics, views(users, 1, wall_clock_ms()))
    await drain(topics)
    await send_records(
        topics, views(users, 2, wall_clock_ms()) + views(users[:3], 3, wall_clock_ms())
    )
    read: list[int] = []

    async def counted(user_ids: Sequence[str], *args: Any, **kwargs: Any) -> pipeline.HeldBack:
        read.append(len(user_ids))
        return await pipeline.held_back_changes(user_ids, *args, **kwargs)

    monkeypatch.setattr(worker_module, "HELD_BACK_CHUNK", 3)
    monkeypatch.setattr(worker_module, "held_back_changes", counted)
    stats = await drain(topics)  # within the heartbeat of the first drain's messages
    assert stats.held_back_published == len(users)
    assert sorted(read) == [2, 3, 3]
    await assert_every_last_message_is_the_stored_profile(topics)


@pytest.mark.parametrize("marked", [False, True], ids=["before-its-mark", "after-its-mark"])
async def test_changes_held_back_by_a_worker_that_crashed_are_published_by_the_next(
    make_settings, marked: bool
) -> None:
    """The held-back index has a copy in Redis: the partitions' next owner publishes what a
    worker that died (no hand-off at a stop) held back, once due; also when the worker
    died between marking the profiles published and sending their messages."""
    settings = await make_settings(partitions=2, heartbeat_s=3.0)
    users = [f"quiet-{i}" for i in range(8)]
    crashed, run = await running(settings)
    try:
        await published_then_counted(settings, users)
        await wait_until(lambda: len(crashed.held_back) == len(users), 15, "held back")
        for _ in range(100):  # saved before the batch's commit, after the index noted them
            ledger, _ = await crashed.ledger.read({0, 1})
            if sum(map(len, ledger.values())) == len(users):
                break
            await asyncio.sleep(0.05)
        assert sorted(u for due in ledger.values() for u in due) == sorted(users)
        ttl_ms = settings.held_back_ttl_s * 1000
        for partition in (p for p, due in ledger.items() if due):
            key = crashed.ledger.key(partition)
            assert 0 < await crashed.redis.pttl(key) <= ttl_ms  # the setting's TTL
    finally:
        run.cancel()  # dies: nothing handed off
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await crashed.close()
    assert crashed.stats.held_back_published == 0
    if marked:
        store = redis_store.RedisProfileStore(redis_store.connect(settings.redis_url))
        held = await pipeline.held_back_changes(
            users, store, crashed.params, wall_clock_ms(), pipeline.Stages(), handing_off=True
        )
        assert await store.save(held.writes) == []  # the marks landed; no message went out
        await store.client.aclose()

    successor, run = await running(settings)
    try:
        await wait_until(lambda: successor.stats.held_back_published >= len(users), 20, "published")
        assert successor.stats.applied == 0  # from the ledger, not from events
        await wait_until(lambda: not len(successor.held_back), 5, "settled")
        await successor._save_ledger()
        assert await successor.ledger.read({0, 1}) == ({0: {}, 1: {}}, {})
    finally:
        successor.request_stop()
        await asyncio.wait_for(run, 30)
        await successor.close()
    await assert_every_last_message_is_the_stored_profile(settings)


async def test_a_held_back_ledger_key_of_another_type_spoils_only_its_partition(
    topics: Settings,
) -> None:
    client = aioredis.Redis.from_url(topics.redis_url)
    ledger = HeldBackLedger(client, topics.group_id)
    try:
        await client.set(ledger.key(1), b"not a sorted set")
        waiting = {p: {f"u{p}": 1000 + p} for p in range(3)}
        assert await ledger.save(LedgerChanges(waiting=waiting)) == [1]
        saved, refused = await ledger.read(range(3))
        assert saved == {0: waiting[0], 2: waiting[2]} and list(refused) == [1]
        assert await client.get(ledger.key(1)) == b"not a sorted set"
    finally:
        await client.aclose()


async def test_each_save_starts_a_held_back_ledgers_ttl_again(topics: Settings) -> None:
    """A consumer group that stopped for good leaves no ledger behind for ever."""
    client = aioredis.Redis.from_url(topics.redis_url)
    ledger = HeldBackLedger(client, topics.group_id, ttl_ms=60_000)
    try:
        await ledger.save(LedgerChanges(waiting={0: {"a": 1000}, 1: {"b": 1000}}))
        await client.pexpire(ledger.key(0), 5_000)
        await ledger.save(LedgerChanges(done={0: {"nobody": 1000}}))  # changes nothing there
        assert 5_000 < await client.pttl(ledger.key(0)) <= 60_000  # saved: started again
        assert 0 < await client.pttl(ledger.key(1)) <= 60_000
        await HeldBackLedger(client, topics.group_id).save(LedgerChanges(waiting={1: {"c": 5}}))
        assert await client.pttl(ledger.key(1)) == -1  # a TTL of 0: kept
        await ledger.save(LedgerChanges(done={0: {"a": 1000}}))
        assert await client.exists(ledger.key(0)) == 0  # its last user gone: so is the set
    finally:
        await client.aclose()


async def test_a_held_back_ledger_redis_refuses_costs_no_event_and_no_commit(
    make_settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger is a hint: a key of another type (Redis refuses every command on it)
    is logged, and the batches are applied and committed as ever."""
    settings = await make_settings(partitions=1)
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await client.set(HeldBackLedger(client, settings.group_id).key(0), b"not a sorted set")
    finally:
        await client.aclose()
    users = [f"quiet-{i}" for i in range(5)]
    records = views(users, 1, wall_clock_ms())
    await send_records(settings, records)
    await drain(settings)
    await send_records(settings, views(users, 2, wall_clock_ms()))  # held back
    stats = await drain(settings)
    assert stats.applied == len(users) and stats.held_back_published == len(users)
    ends = await end_offsets(settings, settings.topic_events)
    assert await committed_offsets(settings) == ends
    assert "the held-back ledger of partition 0 cannot be read" in caplog.text
    assert "the held-back ledger of partitions [0] holds another type" in caplog.text
    await assert_every_last_message_is_the_stored_profile(settings)


async def test_changes_held_back_as_redis_goes_at_a_stop_are_published_by_the_next_owner(
    make_settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis fails at once (a fail-over's READONLY, a restart's LOADING; here a connection
    refused, not retried by the client) as a stopping worker saves the users its last
    batch held back, and at its hand-off of them. The batch is then left uncommitted,
    and its replay by the partition's next owner publishes the changes held back."""
    settings = await make_settings(partitions=1, heartbeat_s=600.0)
    users = [f"quiet-{i}" for i in range(5)]
    await send_records(settings, views(users, 1, wall_clock_ms()))
    await drain(settings)
    await send_records(settings, views(users, 2, wall_clock_ms()))  # held back
    stopping = BatchWorker(settings)
    gone = aioredis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))  # nothing listens
    note = stopping.held_back.note

    def noted_then_redis_gone(held_back: dict[str, tuple[int, int]], published: Any) -> None:
        note(held_back, published)  # the batch is written and published: then Redis goes
        stopping.store.client = stopping.ledger.client = gone
        stopping.request_stop()

    stopping.held_back.note = noted_then_redis_gone  # type: ignore[method-assign]
    await stopping.start()
    try:
        await worker_module.stop_within(asyncio.create_task(stopping.run()))
    finally:
        await stopping.close()
        await gone.aclose()
    assert stopping.stats.applied == 0  # never counted: the batch was not committed
    assert "saving the held-back ledger failed" in caplog.text
    ends = await end_offsets(settings, settings.topic_events)
    assert await committed_offsets(settings) != ends
    stats = await drain(settings)
    assert stats.replayed == len(users) and stats.changes_published == len(users)
    await assert_every_last_message_is_the_stored_profile(settings)


async def wait_for_messages(settings: Settings, n: int, timeout_s: float = 15.0) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        updates = await read_topic(settings.kafka_bootstrap, settings.topic_updates)
        if len(updates) >= n or asyncio.get_running_loop().time() > deadline:
            assert len(updates) == n, f"{len(updates)} change messages, not {n}"
            return updates
        await asyncio.sleep(0.2)


async def test_a_worker_whose_broker_is_gone_closes_its_consumer_to_the_end(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the broker gone, a fetch waiting out its retry backoff is cancelled as the
    consumer stops, and aiokafka let that cancellation out of its `stop()` before it closed
    the consumer's client: a warning ("the consumer's stop failed: CancelledError"), and
    the client's metadata task retrying the gone broker for as long as the process ran."""
    broker = LocalBroker().start()  # its own: this test kills it
    try:
        settings = Settings(
            kafka_bootstrap=broker.bootstrap, redis_url=redis_url, encoder_model="none",
            group_id=f"gone-{uuid.uuid4().hex[:8]}",
            kafka_session_timeout_ms=2000, kafka_heartbeat_interval_ms=200,
        )  # fmt: skip
        await create_topics(broker.bootstrap, default_topics(settings, 1))
        login = {"event_id": "g1", "user_id": "ada", "type": "login", "ts": wall_clock_ms()}
        await send_records(settings, [(b"ada", orjson.dumps(login))])
        worker = BatchWorker(settings)
        await worker.start()
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: worker.stats.applied == 1, 20, "the login applied")
        with caplog.at_level(logging.WARNING):
            os.killpg(broker.pid, signal.SIGKILL)
            fetching = "Failed fetch messages"  # from here on, fetches wait out backoffs
            await wait_until(lambda: fetching in caplog.text, 20, "a fetch failing")
            worker.request_stop()
            await task
            await worker.close()
        assert "the consumer's stop failed" not in caplog.text
        assert worker.consumer._client._sync_task is None  # the client closed
    finally:
        broker.stop()


async def test_users_held_back_by_a_batch_whose_partition_went_meanwhile_are_handed_off(
    topics: Settings,
) -> None:
    """A partition let go while its batch was being written: the users that batch held
    back were noted after the hand-off had run, and waited on this worker for their
    heartbeat instead of being published at once."""
    now = wall_clock_ms()
    first = {"event_id": "h1", "user_id": "ada", "type": "login", "ts": now}
    second = {**first, "event_id": "h2"}  # counters only: held back by the heartbeat
    await send_records(topics, [(b"ada", orjson.dumps(first))])
    worker = BatchWorker(topics)
    await worker.start()
    try:
        await worker.process(await take(worker, 1))
        await send_records(topics, [(b"ada", orjson.dumps(second))])
        records = await take(worker, 1)
        started, ends = time.monotonic(), next_offsets(records)
        folded, _ = await worker._fold(records, ends, started)
        # The group moves ada's partition to another worker while the batch is written.
        (tp,) = ends
        await worker.assignment.on_partitions_revoked({tp})
        await worker.assignment.on_partitions_assigned(set())
        await worker._publish_held_back(None)  # the loop's look: nothing held back yet
        result = await worker._write(records, folded, frozenset())
        await worker._finish(records, ends, result, started)
        assert result.held_back and not result.changes
        await worker._publish_held_back(None)  # the loop's next look
        assert worker.stats.held_back_published == 1
        assert "ada" not in worker.held_back
    finally:
        await worker.close()


async def test_a_batch_over_a_partition_kept_and_one_let_go_commits_the_one_kept(
    topics: Settings,
) -> None:
    """A rebalance while a batch was written took one of its partitions and left the
    others: aiokafka refuses a commit naming a partition no longer assigned, whole,
    so the partitions kept were not committed either (replayed after a restart, and
    shown as the group's lag while no more records came)."""
    now = wall_clock_ms()
    bodies = [
        {"event_id": f"k{i}", "user_id": f"u{i}", "type": "login", "ts": now} for i in range(30)
    ]
    await send_records(topics, [(str(b["user_id"]).encode(), orjson.dumps(b)) for b in bodies])
    first = BatchWorker(topics)
    await first.start()
    second = BatchWorker(topics)
    try:
        records = await take(first, len(bodies))
        started, ends = time.monotonic(), next_offsets(records)
        assert len(ends) == 3
        folded, _ = await first._fold(records, ends, started)
        # A second worker joins the group while the batch is written.
        await second.start()
        joined = asyncio.ensure_future(take(second, 1))

        def kept() -> set[TopicPartition]:
            return {tp for tp in first.consumer.assignment() if tp in ends}

        while not 0 < len(kept()) < 3:  # the first rejoins as it polls
            await first.consumer.getmany(timeout_ms=100)  # (what it fetches again: unused)
        joined.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await joined
        result = await first._write(records, folded, frozenset())
        await first._finish(records, ends, result, started)
        committed = await committed_offsets(topics)
        mine = kept()
        assert {tp.partition: committed[tp.partition] for tp in mine} == {
            tp.partition: ends[tp] for tp in mine
        }
        assert all(committed[tp.partition] is None for tp in ends if tp not in mine)
    finally:
        await second.close()
        await first.close()
