"""An erased user stays erased on Redis: what only the real store can show.

The erasure marker must suppress the user's older events for
`PROFILER_ERASED_MARKER_DAYS` whatever the profile TTL: a profile rebuilt after
the erase carries the marker in its state, which expires with the profile, so
the erase keeps the marker apart too (`erased_key`). And a stale worker's
refused write must not bring any key of an erased user back.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import redis.asyncio as aioredis

from profiling.pipeline import Record, Stages, apply_batch, fold_batch
from profiling.profile import Profile, ProfileParams
from profiling.store import Erasure, Write, profile_key, state_key
from stream.model_setup import build_models
from stream.redis_store import ASIDE_TTL_MS, RedisProfileStore, erased_key
from stream.settings import Settings

T0 = 1_700_000_000_000
ERASED_AT = T0 + 10_000


def clock() -> int:
    return T0 + 3_600_000


def record(user: str, event_id: str, ts: int, offset: int, kind: str = "view") -> Record:
    body: dict[str, object] = {"event_id": event_id, "user_id": user, "type": kind, "ts": ts}
    body |= {"item_id": "i1", "title": "A phone", "category": "electronics"}
    if kind == "purchase":
        body |= {"amount": 99.0, "card_fp": "c1"}
    return Record("behavior-events", 0, offset, user.encode(), orjson.dumps(body))


async def expire_profile(client: aioredis.Redis, user_id: str) -> None:
    """As if the profile TTL had passed: its hash and state are gone."""
    await client.pexpire(profile_key(user_id), 1)
    await client.pexpire(state_key(user_id), 1)
    await asyncio.sleep(0.01)
    assert not await client.exists(profile_key(user_id), state_key(user_id))


def rebuilt(user_id: str, merged_into: str | None = None) -> Write:
    """The first write of a profile built from events after the erase."""
    profile = Profile(
        user_id, version=1, events=1, updated=T0, erased_before=ERASED_AT, merged_into=merged_into
    )
    return Write(profile, 0)


async def test_the_marker_outlives_the_profile_ttl(redis_client: aioredis.Redis) -> None:
    store = RedisProfileStore(redis_client, ttl_s=60)
    assert await store.erase("alice", ERASED_AT) is Erasure.ABSENT
    assert await store.save([rebuilt("alice")]) == []
    assert 0 < await redis_client.pttl(state_key("alice")) <= 60_000  # the profile's TTL
    assert await redis_client.pttl(erased_key("alice")) == -1  # the marker's: none

    await expire_profile(redis_client, "alice")
    assert await store.load(["alice"]) == {"alice": Profile("alice", erased_before=ERASED_AT)}
    # A new profile folded without the marker is refused; folded with it, it lands.
    unmarked = Write(Profile("alice", version=1, events=1, updated=T0), 0)
    assert await store.save([unmarked]) == ["alice"]
    assert await store.save([rebuilt("alice")]) == []


async def test_an_event_older_than_the_erase_stays_suppressed_after_the_profile_ttl(
    redis_client: aioredis.Redis,
) -> None:
    store = RedisProfileStore(redis_client, ttl_s=60)
    await store.erase("alice", ERASED_AT)
    newer = [record("alice", "new", ERASED_AT + 5, 0)]
    assert (await apply_batch(newer, store, ProfileParams(), clock)).outcomes["applied"] == 1

    await expire_profile(redis_client, "alice")
    older = [record("alice", "old", T0, 1)]  # a replay of the log, say
    result = await apply_batch(older, store, ProfileParams(), clock)
    assert (result.outcomes["suppressed"], result.outcomes["applied"]) == (1, 0)
    assert await store.read_profile("alice") is None


async def test_the_marker_apart_keeps_its_own_ttl(redis_client: aioredis.Redis) -> None:
    store = RedisProfileStore(redis_client, ttl_s=3600, erased_ttl_s=60)
    await store.erase("alice", ERASED_AT)
    assert await store.save([rebuilt("alice")]) == []
    assert 0 < await redis_client.pttl(erased_key("alice")) <= 60_000  # a write leaves it
    assert await redis_client.pttl(state_key("alice")) > 60_000


async def test_erases_after_the_profile_ttl_read_the_marker_apart(
    redis_client: aioredis.Redis,
) -> None:
    store = RedisProfileStore(redis_client, ttl_s=60)
    await store.erase("alice", ERASED_AT)
    await store.save([rebuilt("alice")])
    await expire_profile(redis_client, "alice")
    assert await store.erase("alice", ERASED_AT) is Erasure.REPEATED  # a replayed command
    assert not await redis_client.exists(state_key("alice"))  # touched nothing

    assert await store.erase("alice", ERASED_AT + 1) is Erasure.ABSENT  # a newer one
    marker = b'{"erased":%d,"before":[[%d,null]]}' % (ERASED_AT + 1, ERASED_AT)
    assert await redis_client.mget(state_key("alice"), erased_key("alice")) == [marker, marker]


async def test_a_merged_users_marker_outlives_the_profile_ttl(
    redis_client: aioredis.Redis,
) -> None:
    store = RedisProfileStore(redis_client, ttl_s=60)
    await store.save([Write(Profile("alice", version=1, events=1, updated=T0), 0)])
    assert (await store.set_aside("alice", ERASED_AT, "bob"))[0] is Erasure.ERASED
    await store.drop_aside("alice")
    assert await store.save([rebuilt("alice", merged_into="bob")]) == []

    await expire_profile(redis_client, "alice")
    assert await store.merged_into(["alice", "bob"]) == {"alice": "bob"}
    expected = Profile("alice", erased_before=ERASED_AT, merged_into="bob")
    assert await store.load(["alice"]) == {"alice": expected}


async def test_a_merged_users_window_stays_a_day_and_the_marker_apart_without_it(
    redis_client: aioredis.Redis,
) -> None:
    """The window a merge's marker keeps is for replays and re-sends, which come within
    the day a profile stays aside: then the state expires, and the marker apart, the
    size of any erasure's, is what stays."""
    store = RedisProfileStore(redis_client)
    window = b"\n12345678"
    visitor = Profile("alice", version=1, events=1, updated=T0, watermarks={0: 9}, seen=window[1:])
    await store.save([Write(visitor, 0)])
    await store.set_aside("alice", ERASED_AT, "bob")
    marker = b'{"erased":%d,"into":"bob"}' % ERASED_AT
    state, apart = await redis_client.mget(state_key("alice"), erased_key("alice"))
    assert (state, apart) == (marker[:-1] + b',"wm":{"0":9}}' + window, marker)
    assert 0 < await redis_client.pttl(state_key("alice")) <= ASIDE_TTL_MS
    assert await redis_client.pttl(erased_key("alice")) == -1

    await redis_client.delete(state_key("alice"))  # as if the day had passed
    expected = Profile("alice", erased_before=ERASED_AT, merged_into="bob")
    assert await store.load(["alice"]) == {"alice": expected}


async def test_a_stale_workers_write_after_an_erase_brings_no_key_back(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Worker A folds a purchase from its cached profile; the user is erased meanwhile
    (by B, which got the user's partition): A's write is refused, features and all."""
    settings = Settings(redis_url=redis_url, encoder_model="none")
    stages = Stages(None, False, build_models(settings))
    worker_a = RedisProfileStore(redis_client, cache_users=100)
    await apply_batch([record("u", "e1", T0, 0, "purchase")], worker_a, ProfileParams(), clock)
    later = [record("u", "e2", T0 + 1000, 1, "purchase")]
    folded = await fold_batch(later, worker_a, ProfileParams(), clock, stages)

    await RedisProfileStore(redis_client).erase("u", ERASED_AT)
    result = await folded.write()

    assert result.users_written == 0
    keys = {key.decode() async for key in redis_client.scan_iter(match="*{u}*")}
    assert keys == {state_key("u"), erased_key("u")}


async def test_a_replayed_erase_or_merge_leaves_a_rebuilt_profiles_features(
    redis_client: aioredis.Redis,
) -> None:
    """A replayed erase changes nothing: it used to drop the features a profile rebuilt
    since had scored (their labels then found nothing), and a replayed merge moved
    them to the account."""
    store = RedisProfileStore(redis_client)
    first = Write(Profile("alice", version=1, events=1, updated=T0), 0, (("old", b"\x01"),))
    assert await store.save([first]) == []
    assert await store.erase("alice", ERASED_AT) is Erasure.ERASED
    again = rebuilt("alice")
    assert await store.save([Write(again.profile, 0, (("new", b"\x02"),))]) == []
    assert await store.erase("alice", ERASED_AT) is Erasure.REPEATED
    assert (await store.set_aside("alice", ERASED_AT, "bob"))[0] is Erasure.REPEATED
    scored = [("alice", "old"), ("alice", "new"), ("bob", "new")]
    assert await store.load_scored(scored) == [None, b"\x02", None]


async def test_an_erase_cut_short_is_finished_by_its_replay(redis_client: aioredis.Redis) -> None:
    store = RedisProfileStore(redis_client)
    first = Write(Profile("alice", version=1, events=1, updated=T0), 0, (("old", b"\x01"),))
    assert await store.save([first]) == []

    async def crash(user_id: str, event_ids: list[str]) -> None:
        raise ConnectionError("gone after the script")

    store._drop_scored = crash  # type: ignore[method-assign]
    with contextlib.suppress(ConnectionError):
        await store.erase("alice", ERASED_AT)
    store = RedisProfileStore(redis_client)
    assert await store.load_scored([("alice", "old")]) == [b"\x01"]  # left behind
    assert await store.erase("alice", ERASED_AT) is Erasure.REPEATED
    assert await store.load_scored([("alice", "old")]) == [None]
    assert not await redis_client.keys("profile-scored*")
