"""The worker's profile cache (`RedisProfileStore(cache_users=...)`) on a real Redis.

A store that keeps the profiles it wrote must behave exactly like one that reads
every profile back: what it holds is what Redis holds, and a profile someone
else wrote meanwhile (a partition that moved and came back, an erased or
expired profile rewritten since) is never built upon: the compare-and-set on
version and `updated` refuses the write, and the pipeline reloads the user.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from dataclasses import astuple

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from profiling.commands import apply_commands
from profiling.pipeline import (
    BatchResult,
    FoldedBatch,
    Record,
    Stages,
    apply_batch,
    fold_batch,
    held_back_changes,
)
from profiling.profile import ProfileParams, event_digest
from profiling.store import profile_key, public_fields, state_key, vector_fields
from stream.devstack import free_port
from stream.interest_setup import interest_model
from stream.model_setup import build_models
from stream.redis_store import RedisProfileStore
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator

T0 = 1_700_000_000_000
TOPIC = "behavior-events"


def ticking(start: int = T0) -> Callable[[], int]:
    """A clock that moves 1 ms per reading, so every write has its own `updated`."""
    now = [start]

    def clock() -> int:
        now[0] += 1
        return now[0]

    return clock


def shop_records(n: int, users: int) -> list[Record]:
    shop = ShopGenerator(users=users, seed=11, start_ms=T0, end_ms=T0 + 3_600_000)
    return [
        Record(TOPIC, zlib.crc32(key) % 3, offset, key, value)
        for offset, (key, value) in enumerate(shop.records(n, 0.01, 0.02))
    ]


def event(user: str, event_id: str, ts: int, offset: int) -> Record:
    body = (
        f'{{"event_id":"{event_id}","user_id":"{user}","type":"view","ts":{ts},'
        '"item_id":"i1","category":"books","price":9.5,"title":"A novel"}'
    )
    return Record(TOPIC, 0, offset, user.encode(), body.encode())


async def reloaded(client: aioredis.Redis, user: str) -> tuple[object, ...]:
    """The user's profile as a store without a cache reads it from Redis."""
    fresh = await RedisProfileStore(client).load([user])
    return astuple(fresh[user])


async def stored_hash(client: aioredis.Redis, user: str) -> dict[str, str | bytes]:
    raw = await client.hgetall(profile_key(user))
    return {
        name.decode(): value if name.decode() in ("vec_long", "vec_short") else value.decode()
        for name, value in raw.items()
    }


async def test_cached_profiles_are_what_redis_holds(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    settings = Settings(redis_url=redis_url, encoder_model="hashing")
    interests = interest_model(settings, redis_client)
    assert interests is not None
    stages = Stages(interests, False, build_models(settings, interests.encoder.dim))
    store = RedisProfileStore(redis_client, cache_users=10_000)
    records = shop_records(3000, users=40)
    clock, applied = ticking(T0 + 7_200_000), 0  # after the shop's hour: no event is ahead
    for start in range(0, len(records), 150):  # many batches per user: the cache is used
        result = await apply_batch(
            records[start : start + 150], store, ProfileParams(), clock, stages
        )
        applied += result.outcomes["applied"]
        for user, cached in list(store._cache.items()):
            assert astuple(cached) == await reloaded(redis_client, user), user
            # Writes send only what changed: the hash is still the whole profile.
            expected = {**public_fields(cached), **vector_fields(cached)}
            assert await stored_hash(redis_client, user) == expected, user
    assert applied > 2900
    assert store.cached_users == len({record.key for record in records})
    assert store.loads_from_redis == len({record.key for record in records})  # once per user
    assert store.loads_from_cache > store.loads_from_redis
    assert any(profile.interest and profile.risk is not None for profile in store._cache.values())


async def test_a_profile_written_elsewhere_is_reloaded_not_overwritten(
    redis_client: aioredis.Redis,
) -> None:
    cached, other = (
        RedisProfileStore(redis_client, cache_users=100),
        RedisProfileStore(redis_client),
    )
    params, clock = ProfileParams(), ticking()
    await apply_batch([event("ann", "e1", T0, 0)], cached, params, clock)
    # Another writer (the partition's owner while this worker did not hold it).
    await apply_batch([event("ann", "e2", T0 + 1000, 1)], other, params, clock)
    result = await apply_batch([event("ann", "e3", T0 + 2000, 2)], cached, params, clock)
    assert result.outcomes["applied"] == 1
    stored = await redis_client.hgetall(profile_key("ann"))
    assert stored[b"events"] == b"3" and stored[b"version"] == b"3"
    assert astuple(cached._cache["ann"]) == await reloaded(redis_client, "ann")


async def test_a_rewritten_profile_at_the_same_version_is_not_built_upon(
    redis_client: aioredis.Redis,
) -> None:
    """Same version, other content (erased, then rebuilt by another writer): `updated` tells."""
    cached, other = (
        RedisProfileStore(redis_client, cache_users=100),
        RedisProfileStore(redis_client),
    )
    params, clock = ProfileParams(), ticking()
    await apply_batch([event("bob", "e1", T0, 0)], cached, params, clock)
    await redis_client.delete(profile_key("bob"), state_key("bob"))
    await apply_batch([event("bob", "x1", T0 + 500, 0)], other, params, clock)
    assert (await redis_client.hget(profile_key("bob"), "version")) == b"1"
    await apply_batch([event("bob", "e2", T0 + 1000, 1)], cached, params, clock)
    stored = (await RedisProfileStore(redis_client).load(["bob"]))["bob"]
    assert stored.version == 2
    # Built on the rewrite, not on the cache: its window holds x1 and e2, not e1.
    assert stored.seen == event_digest("x1") + event_digest("e2")


async def test_held_back_changes_of_a_user_erased_elsewhere_are_not_published(
    redis_client: aioredis.Redis,
) -> None:
    """A merge runs on the worker of the user merged into: the worker that held back the
    visitor's changes still caches the visitor, and must not publish them after the
    visitor's tombstone."""
    cached, other = (
        RedisProfileStore(redis_client, cache_users=100),
        RedisProfileStore(redis_client),
    )
    params, clock = ProfileParams(heartbeat_ms=60_000), ticking()
    await apply_batch([event("vis", "e1", T0, 0)], cached, params, clock)
    quiet = await apply_batch([event("vis", "e2", T0 + 1000, 1)], cached, params, clock)
    assert "vis" in quiet.held_back
    await other.set_aside("vis", T0 + 2000, merged_into="acct")
    assert "vis" in cached._cache  # this worker does not know
    held = await held_back_changes(["vis"], cached, params, T0 + 120_000, Stages())
    assert not held.changes and not held.writes
    assert not await redis_client.exists(profile_key("vis"))


async def test_publishing_held_back_changes_keeps_the_profiles_ttl(
    redis_client: aioredis.Redis,
) -> None:
    """A profile expires `PROFILER_PROFILE_TTL_S` after the user's last event: the write
    that marks a held-back change message published started the TTL again, so a user
    quiet since lived a heartbeat longer, publishing being no activity of theirs."""
    store = RedisProfileStore(redis_client, ttl_s=3600, cache_users=100)
    params, clock = ProfileParams(heartbeat_ms=60_000), ticking()
    await apply_batch([event("ada", "e1", T0, 0)], store, params, clock)
    quiet = await apply_batch([event("ada", "e2", T0 + 1000, 1)], store, params, clock)
    assert "ada" in quiet.held_back
    keys = (profile_key("ada"), state_key("ada"))
    for key in keys:  # the time the profile has left a while after the user's last event
        await redis_client.pexpire(key, 1_000_000)
    held = await held_back_changes(["ada"], store, params, T0 + 120_000, Stages())
    assert [user for user, _ in held.changes] == ["ada"]
    assert await store.save(held.writes) == []
    (stored,) = (await RedisProfileStore(redis_client).load(["ada"])).values()
    assert stored.published_version == stored.version  # the mark landed
    for key in keys:
        assert 0 < await redis_client.pttl(key) <= 1_000_000, key


async def test_the_cache_is_bounded_and_off_at_zero(redis_client: aioredis.Redis) -> None:
    records = [event(f"u{i}", f"e{i}", T0 + i, i) for i in range(30)]
    bounded, off = RedisProfileStore(redis_client, cache_users=8), RedisProfileStore(redis_client)
    await apply_batch(records[:20], bounded, ProfileParams(), ticking())
    await apply_batch(records[20:], off, ProfileParams(), ticking())
    assert bounded.cached_users == 8 and list(bounded._cache) == [f"u{i}" for i in range(12, 20)]
    assert off.cached_users == 0


async def test_a_batch_of_cached_users_reads_nothing_from_redis(
    redis_client: aioredis.Redis,
) -> None:
    """Their dedupe windows are in the profiles the store holds: one script call, the save."""
    store = RedisProfileStore(redis_client, cache_users=100)
    params, clock = ProfileParams(), ticking()
    users = [f"u{i}" for i in range(5)]
    first = [event(u, f"{u}-1", T0, i) for i, u in enumerate(users)]
    await apply_batch(first, store, params, clock)
    await redis_client.config_resetstat()
    batch = [event(u, f"{u}-{n}", T0 + n, 10 * n + i) for n in (2, 1) for i, u in enumerate(users)]
    result = await apply_batch(batch, store, params, clock)
    assert (result.outcomes["applied"], result.outcomes["duplicate"]) == (5, 5)
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1  # the save; no load
    assert store.loads_from_redis == len(users)  # the first batch's, once each


async def fold_during_write(
    store: RedisProfileStore, first: Record, second: Record, clock: Callable[[], int]
) -> tuple[BatchResult, FoldedBatch, bool]:
    """As the worker does: `second` folded while the write of `first` runs.

    Returns `first`'s result, `second` folded (not written) and whether the
    first write was still under way when the second batch was folded.
    """
    folded = await fold_batch([first], store, ProfileParams(), clock)
    writing = asyncio.create_task(folded.write())
    await asyncio.sleep(0)  # packed and sent; the reply is not read yet
    later = await fold_batch([second], store, ProfileParams(), clock)
    overlapped = not writing.done()
    return await writing, later, overlapped


async def test_the_next_batch_folds_from_a_write_still_under_way(
    redis_client: aioredis.Redis,
) -> None:
    """The worker folds batch N+1 while Redis runs N's write: the cache holds N's profiles."""
    store = RedisProfileStore(redis_client, cache_users=100)
    params, clock = ProfileParams(), ticking()
    await apply_batch([event("cy", "e1", T0, 0)], store, params, clock)
    first, second, overlapped = await fold_during_write(
        store, event("cy", "e2", T0 + 1000, 1), event("cy", "e3", T0 + 2000, 2), clock
    )
    assert overlapped
    assert first.refolded == set()
    result = await second.write()
    assert (result.outcomes["applied"], result.refolded) == (1, set())
    stored = (await RedisProfileStore(redis_client).load(["cy"]))["cy"]
    assert (stored.version, stored.events) == (3, 3)
    assert store.loads_from_redis == 1  # the second batch read the first's write from the cache


async def test_a_batch_folded_from_a_write_that_did_not_land_is_folded_again(
    redis_client: aioredis.Redis,
) -> None:
    """`stale`: the write before was refused and redone at the same version and stamp.

    A clock that stands still makes the redone write indistinguishable from the
    one the next batch was folded from, so only `stale` keeps it from building on it.
    """
    cached, other = (
        RedisProfileStore(redis_client, cache_users=100),
        RedisProfileStore(redis_client),
    )
    params, still = ProfileParams(), lambda: T0 + 10_000
    await apply_batch([event("di", "e1", T0, 0)], cached, params, still)
    await redis_client.delete(profile_key("di"), state_key("di"))
    await apply_batch([event("di", "x1", T0 + 500, 0)], other, params, lambda: T0 + 20_000)
    first, second, _ = await fold_during_write(
        cached, event("di", "e2", T0 + 1000, 1), event("di", "e3", T0 + 2000, 2), still
    )
    assert first.refolded == {"di"}  # refused (another `updated`), folded again
    result = await second.write(stale={"di"})
    assert (result.outcomes["applied"], result.refolded) == (1, {"di"})
    stored = (await RedisProfileStore(redis_client).load(["di"]))["di"]
    assert stored.seen == event_digest("x1") + event_digest("e2") + event_digest("e3")


async def test_a_write_that_failed_leaves_none_of_its_profiles_cached(
    redis_client: aioredis.Redis,
) -> None:
    """Nobody can tell which writes of a failed round trip landed: they are read again."""
    store = RedisProfileStore(redis_client, cache_users=100)
    params, clock = ProfileParams(), ticking()
    await apply_batch([event("ed", "e1", T0, 0)], store, params, clock)
    folded = await fold_batch([event("ed", "e2", T0 + 1000, 1)], store, params, clock)
    dead = RedisProfileStore(aioredis.Redis(port=free_port()), cache_users=100)
    dead._cache = store._cache
    folded.store = dead
    with pytest.raises(RedisConnectionError):
        await folded.write()
    await dead.client.aclose()
    assert store.cached_users == 0
    folded.store = store  # the same batch, written again once Redis answers
    result = await folded.write()
    assert (result.outcomes["applied"], result.refolded) == (1, {"ed"})
    stored = (await RedisProfileStore(redis_client).load(["ed"]))["ed"]
    assert (stored.version, stored.events) == (2, 2)


async def test_a_merge_replayed_on_a_worker_that_cached_the_account_publishes_it_again(
    redis_client: aioredis.Redis,
) -> None:
    """The account's partition moved to another worker, which merged the visitor in and
    died before its acks; replayed back here, the merge is found done (the digest in
    the account's window) and its message sent again, not judged on the stale copy."""
    here, there = (RedisProfileStore(redis_client, cache_users=100) for _ in range(2))
    params, clock = ProfileParams(), ticking()
    await apply_batch([event("acct", "e1", T0, 0)], here, params, clock)
    await apply_batch([event("anon", "v1", T0 + 10, 1)], there, params, clock)
    await apply_batch([event("acct", "e2", T0 + 20, 2)], there, params, clock)
    body = b'{"command":"merge","from_user_id":"anon","user_id":"acct"}'
    merge = Record("profile-commands", 0, 7, b"acct", body, T0 + 5000)
    first = await apply_commands([merge], there, clock(), params, Stages())
    assert first.commands == {("merge", "merged"): 1}
    replay = await apply_commands([merge], here, clock(), params, Stages())
    assert replay.commands == {("merge", "repeated"): 1}
    assert [(user, orjson.loads(change)["events"]) for user, change in replay.changes] == [
        ("acct", 3)
    ]
