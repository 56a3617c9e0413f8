"""One contract, two stores: the in-memory twin and the real Redis behave the same.

Every test here runs over `InMemoryProfileStore` (what the engine's unit tests
trust) and `RedisProfileStore` on the session redis-server, through the
`ProfileStore` protocol only, so a difference between the twin and the real
thing fails here rather than in production. What only Redis can show (TTLs,
the hash-tagged key layout) is tested for Redis alone, at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from profiling.forwarding import ERASURES_KEPT, Marker
from profiling.profile import Profile, event_digest
from profiling.store import (
    Erasure,
    InMemoryProfileStore,
    ProfileStore,
    Write,
    profile_key,
    public_fields,
    scored_index_key,
    scored_key,
    seen_key,
    state_key,
)
from profiling.vectors import StoredInterest
from stream.devstack import COMPACT_HASH_VALUE_BYTES
from stream.redis_store import RedisProfileStore, compact_hash_limit, connect, erased_key

T0 = 1_700_000_000_000


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ProfileStore]:
    """The same contract over each implementation (Redis flushed before each test)."""
    if request.param == "memory":
        yield InMemoryProfileStore()
        return
    client = connect(request.getfixturevalue("redis_url"))
    try:
        yield RedisProfileStore(client)
    finally:
        await client.aclose()


def rich_profile(user_id: str = "alice", version: int = 3) -> Profile:
    """A profile with every field away from its default."""
    return Profile(
        user_id=user_id,
        version=version,
        first_seen=T0,
        last_seen=T0 + 86_400_000,
        updated=T0 + 90_000_000,
        events=11,
        counts={"view": 6, "click": 2, "purchase": 2, "login": 1},
        spend=123.456789,
        orders=2,
        category_scores={
            "electronics.smartphone": 7.123456789012345,
            "home.kitchen": 0.1 + 0.2,
            "books": 1e-9,
        },
        watermarks={0: 41, 2: 7, 5: 1_000_000},
        published_at=T0 + 80_000_000,
        published_version=version - 1,
        unpublished=frozenset({"events", "count:view", "categories"}),
        seen=b"".join(event_digest(f"e{i}") for i in range(11)),
        merges=event_digest("merge\x1fanon\x1f1") + event_digest("merge\x1fanon\x1f2"),
    )


async def write(store: ProfileStore, profile: Profile, expected_version: int) -> list[str]:
    return await store.save([Write(profile, expected_version)])


async def load_one(store: ProfileStore, user_id: str) -> Profile:
    loaded = await store.load([user_id])
    assert set(loaded) == {user_id}
    return loaded[user_id]


# --- the contract ---------------------------------------------------------------


async def test_unknown_users_load_as_empty_profiles(store: ProfileStore) -> None:
    loaded = await store.load(["nobody", "ghost"])
    assert set(loaded) == {"nobody", "ghost"}
    for user_id, found in loaded.items():
        assert found == Profile(user_id)
        assert found.is_new
        assert found.seen == b""
    assert await store.read_profile("nobody") is None


async def test_save_then_load_round_trips_every_field(store: ProfileStore) -> None:
    profile = rich_profile()
    assert await write(store, profile, 0) == []
    loaded = await load_one(store, "alice")
    assert loaded == profile  # counts, spend, scores, watermarks, publication, dedupe window
    assert loaded.watermarks == {0: 41, 2: 7, 5: 1_000_000}  # int partitions, not "0"
    assert loaded.category_scores["home.kitchen"] == 0.1 + 0.2  # floats exact


@pytest.mark.parametrize("window", [b"", b"\n", b"\n\n{}" * 3, bytes(range(256)) * 2])
async def test_any_dedupe_window_bytes_round_trip(store: ProfileStore, window: bytes) -> None:
    """The window's digests are raw bytes after the JSON: newlines and all are theirs."""
    profile = replace(rich_profile(), seen=window)
    assert await write(store, profile, 0) == []
    assert (await load_one(store, "alice")).seen == window


async def test_a_second_write_replaces_the_first(store: ProfileStore) -> None:
    first = rich_profile(version=1)
    assert await write(store, first, 0) == []
    second = replace(
        first,
        version=2,
        events=12,
        counts={**first.counts, "view": 7, "review": 1},
        spend=0.0,
        category_scores={"toys": 2.5},
        watermarks={0: 42},
        unpublished=frozenset(),
        seen=first.seen + event_digest("e11"),
    )
    assert await write(store, second, 1) == []
    assert await load_one(store, "alice") == second


async def test_many_users_in_one_save_and_one_load(store: ProfileStore) -> None:
    profiles = [rich_profile(f"user-{i}", version=1) for i in range(250)]
    assert await store.save([Write(p, 0) for p in profiles]) == []
    loaded = await store.load([p.user_id for p in profiles])
    assert loaded == {p.user_id: p for p in profiles}
    assert await store.save([]) == []
    assert await store.load([]) == {}


@pytest.mark.parametrize("stale", [0, 1, 5])  # behind, one behind, ahead: all refused
async def test_a_write_with_a_wrong_expected_version_is_refused(
    store: ProfileStore, stale: int
) -> None:
    stored = rich_profile(version=2)
    await write(store, rich_profile(version=1), 0)
    await write(store, stored, 1)
    before = await store.read_profile("alice")

    loser = replace(
        stored, version=stale + 1, events=999, counts={"view": 999}, watermarks={}, seen=b"lost"
    )
    other = rich_profile("bob", version=1)
    conflicts = await store.save([Write(loser, stale), Write(other, 0)])

    assert conflicts == ["alice"]  # the conflict is returned, the other write goes through
    assert await load_one(store, "alice") == stored  # nothing of the refused write landed
    assert await store.read_profile("alice") == before
    assert await load_one(store, "bob") == other


async def test_a_write_expecting_another_updated_stamp_is_refused(store: ProfileStore) -> None:
    """Same version, other `updated`: the profile was rewritten since it was read."""
    stored = rich_profile(version=1)
    await write(store, stored, 0)
    newer = replace(stored, version=2, events=12)
    stale = Write(newer, 1, expected_updated=stored.updated - 1)
    assert await store.save([stale]) == ["alice"]
    assert await load_one(store, "alice") == stored
    current = Write(newer, 1, expected_updated=stored.updated)
    assert await store.save([current]) == []
    assert await load_one(store, "alice") == newer


async def test_creating_a_profile_that_exists_is_a_conflict(store: ProfileStore) -> None:
    await write(store, rich_profile(version=1), 0)
    assert await write(store, replace(rich_profile(version=1), events=1), 0) == ["alice"]
    assert await load_one(store, "alice") == rich_profile(version=1)


async def test_read_profile_shows_the_public_fields_only(store: ProfileStore) -> None:
    profile = rich_profile()
    await write(store, profile, 0)
    fields = await store.read_profile("alice")
    assert fields == public_fields(profile)
    assert fields is not None
    assert fields["version"] == "3" and fields["count:view"] == "6"
    assert fields["spend"] == "123.456789"
    assert fields["categories"].startswith('[["electronics.smartphone",7.123457]')
    internal = {"cats", "wm", "pub_at", "pub_v", "unpub", "watermarks", "unpublished", "erased"}
    assert internal.isdisjoint(fields)
    assert await store.read_profile("bob") is None


async def test_relabelled_features_replace_the_kept_ones_and_nothing_else(
    store: ProfileStore,
) -> None:
    scored = (("e1", b"\x01features"), ("e2", b"\x01more"))
    assert await store.save([Write(rich_profile("alice"), 0, scored)]) == []
    await store.relabel_scored([("alice", "e1", b"\x01features\x01"), ("alice", "gone", b"x")])
    assert await store.load_scored([("alice", "e1"), ("alice", "e2"), ("alice", "gone")]) == [
        b"\x01features\x01",
        b"\x01more",
        None,  # not made again
    ]
    if isinstance(store, RedisProfileStore):  # the features keep their expiry
        assert 0 < await store.client.ttl(scored_key("alice", "e1")) <= store.scored_ttl_s


async def test_erase_removes_the_profile_and_its_scored_features(store: ProfileStore) -> None:
    profile = rich_profile("a*[b]?\\c")  # glob characters in the id match only themselves
    scored = (("e1", b"\x01features"), ("e2", b"\x01more"))
    assert await store.save([Write(profile, 0, scored)]) == []
    await write(store, rich_profile("a-bc"), 0)  # a pattern without escapes would match it
    await store.save([Write(rich_profile("other"), 0, (("e1", b"\x01kept"),))])

    assert await store.erase(profile.user_id, T0) is Erasure.ERASED

    assert await store.read_profile(profile.user_id) is None
    assert await load_one(store, profile.user_id) == Profile(profile.user_id, erased_before=T0)
    assert await store.load_scored([(profile.user_id, "e1"), (profile.user_id, "e2")]) == [
        None,
        None,
    ]
    assert await store.load_scored([("other", "e1")]) == [b"\x01kept"]
    assert await load_one(store, "a-bc") == rich_profile("a-bc")


async def test_erase_is_idempotent_and_keeps_a_profile_rebuilt_since(store: ProfileStore) -> None:
    assert await store.erase("alice", T0) is Erasure.ABSENT
    rebuilt = replace(rich_profile(version=1), erased_before=T0)
    assert await write(store, rebuilt, 0) == []
    assert await load_one(store, "alice") == rebuilt  # the marker rides in the state

    assert await store.erase("alice", T0) is Erasure.REPEATED  # a replayed command
    assert await store.erase("alice", T0 - 1) is Erasure.REPEATED  # an older one
    assert await load_one(store, "alice") == rebuilt

    assert await store.erase("alice", T0 + 1) is Erasure.ERASED  # a newer one
    assert await load_one(store, "alice") == Profile(
        "alice", erased_before=T0 + 1, erased_earlier=((T0, None),)
    )


async def test_an_erase_at_time_0_erases(store: ProfileStore) -> None:
    """A command record stamped 0 (a producer's clock at the epoch): a marker of 0 would
    read as never erased, and the erase would find itself done already."""
    await write(store, rich_profile(), 0)
    await write(store, rich_profile("bob"), 0)
    assert await store.erase("alice", 0) is Erasure.ERASED
    assert await store.read_profile("alice") is None
    erased = await load_one(store, "alice")
    assert erased.is_new and erased.erased_before > 0
    assert await store.erase("alice", 0) is Erasure.REPEATED
    assert (await store.set_aside("bob", 0, "carol"))[0] is Erasure.ERASED
    assert await store.markers(["alice", "bob"]) == {
        "alice": Marker(erased.erased_before),
        "bob": Marker(erased.erased_before, "carol"),
    }


async def test_a_merged_users_marker_names_the_user_merged_into(store: ProfileStore) -> None:
    await write(store, rich_profile(), 0)
    await store.set_aside("alice", T0, "bob")
    rebuilt = replace(rich_profile(version=1), erased_before=T0, merged_into="bob")
    assert await write(store, rebuilt, 0) == []
    assert await load_one(store, "alice") == rebuilt  # the marker and its target ride along
    # An erase after it is the user's own: events between the two are theirs to lose,
    # while those older than the merge still go where it took them.
    assert await store.erase("alice", T0 + 1) is Erasure.ERASED
    assert await load_one(store, "alice") == Profile(
        "alice", erased_before=T0 + 1, erased_earlier=((T0, "bob"),)
    )


async def test_a_marker_keeps_the_users_last_erasures_before_it(store: ProfileStore) -> None:
    """Merged away, rebuilt, merged again (or erased): each erasure's time and target stay
    on record, the last `ERASURES_KEPT` of them, also under a profile rebuilt since."""
    await write(store, rich_profile(), 0)
    for i in range(ERASURES_KEPT + 2):
        if i % 3 == 2:
            assert await store.erase("alice", T0 + i) is not Erasure.REPEATED
        else:
            assert (await store.set_aside("alice", T0 + i, f"u{i}"))[0] is not Erasure.REPEATED
            await store.drop_aside("alice")
    history = tuple((T0 + i, None if i % 3 == 2 else f"u{i}") for i in range(ERASURES_KEPT + 2))
    last = ERASURES_KEPT + 1
    expected = Marker(T0 + last, None if last % 3 == 2 else f"u{last}", history[1:-1])
    assert await store.markers(["alice"]) == {"alice": expected}
    rebuilt = replace(
        rich_profile(version=1), erased_before=expected.erased_at,
        merged_into=expected.merged_into, erased_earlier=expected.earlier,
    )  # fmt: skip
    assert await write(store, rebuilt, 0) == []
    assert await load_one(store, "alice") == rebuilt
    assert await store.markers(["alice"]) == {"alice": expected}


async def test_markers_say_who_was_erased_or_merged_and_when(store: ProfileStore) -> None:
    """What a walk along merges reads (`profiling.forwarding`): also a rebuilt profile's."""
    await write(store, rich_profile(), 0)
    await write(store, rich_profile("bob"), 0)
    assert await store.markers([]) == {}
    await store.set_aside("alice", T0, "bob")
    await store.erase("carol", T0 + 5)
    rebuilt = replace(rich_profile("carol", version=1), erased_before=T0 + 5)
    assert await write(store, rebuilt, 0) == []
    assert await store.markers(["alice", "bob", "carol", "dave"]) == {
        "alice": Marker(T0, "bob"),
        "carol": Marker(T0 + 5),
    }


async def test_a_merged_users_marker_keeps_their_watermarks_and_window(
    store: ProfileStore,
) -> None:
    """What the merge took is theirs no more, but their events read again must still be
    replays and duplicates (the account counts them); an erase keeps nothing of theirs."""
    profile = rich_profile()
    await write(store, profile, 0)
    await store.set_aside("alice", T0, "bob")
    merged = Profile(
        "alice", watermarks=profile.watermarks, seen=profile.seen, erased_before=T0,
        merged_into="bob",
    )  # fmt: skip
    assert await load_one(store, "alice") == merged
    assert await store.set_aside("alice", T0 + 1, "carol") == (Erasure.ABSENT, None)
    assert await load_one(store, "alice") == replace(
        merged, erased_before=T0 + 1, merged_into="carol", erased_earlier=((T0, "bob"),)
    )
    assert await store.erase("alice", T0 + 2) is Erasure.ABSENT
    assert await load_one(store, "alice") == Profile(
        "alice", erased_before=T0 + 2, erased_earlier=((T0, "bob"), (T0 + 1, "carol"))
    )


async def test_a_new_profile_folded_before_an_erase_is_refused(store: ProfileStore) -> None:
    """An erase that lands between the load and the write of a new user's first events
    (version 0) must not be overwritten: the marker is part of the compare-and-set."""
    folded = rich_profile(version=1)  # from Profile("alice"): no marker
    await store.erase("alice", T0)
    assert await write(store, folded, 0) == ["alice"]
    assert await load_one(store, "alice") == Profile("alice", erased_before=T0)
    # Folded again from the store, it carries the marker and lands.
    assert await write(store, replace(folded, erased_before=T0), 0) == []


async def test_a_cached_write_after_an_erase_is_refused(store: ProfileStore) -> None:
    stored = rich_profile(version=1)
    await write(store, stored, 0)
    await store.erase("alice", T0)
    assert await write(store, replace(stored, version=2), 1) == ["alice"]
    assert await store.read_profile("alice") is None


async def test_a_refused_write_leaves_no_scored_features(store: ProfileStore) -> None:
    """A stale writer's scored features land with its profile or not at all: after an
    erase they would bring keys of the user back, and they would overwrite the features
    the current writer's risk was computed on."""
    current = rich_profile(version=1)
    assert await store.save([Write(current, 0, (("e1", b"\x01current"),))]) == []
    stale = Write(replace(current, events=99), 0, (("e1", b"\x01stale"), ("e2", b"\x01stale")))
    assert await store.save([stale]) == ["alice"]
    assert await store.load_scored([("alice", "e1"), ("alice", "e2")]) == [b"\x01current", None]

    await store.erase("alice", T0)
    cached = Write(replace(current, version=2), 1, (("e3", b"\x01late"),), current.updated)
    assert await store.save([cached]) == ["alice"]
    assert await store.load_scored([("alice", "e1"), ("alice", "e3")]) == [None, None]
    assert await load_one(store, "alice") == Profile("alice", erased_before=T0)


async def test_set_aside_erases_and_keeps_the_profile_until_dropped(store: ProfileStore) -> None:
    profile = rich_profile()
    assert await write(store, profile, 0) == []
    assert await store.set_aside("alice", T0, "bob") == (Erasure.ERASED, profile)
    assert await store.read_profile("alice") is None
    marker = await load_one(store, "alice")
    assert (marker.erased_before, marker.merged_into, marker.is_new) == (T0, "bob", True)
    assert await store.set_aside("alice", T0, "bob") == (Erasure.REPEATED, profile)  # a replay
    await store.drop_aside("alice")
    assert await store.set_aside("alice", T0, "bob") == (Erasure.REPEATED, None)
    assert await store.set_aside("bob", T0, "carol") == (Erasure.ABSENT, None)


async def test_set_aside_moves_the_scored_features_to_the_user_merged_into(
    store: ProfileStore,
) -> None:
    await store.save([Write(rich_profile(), 0, (("e1", b"\x01one"), ("e2", b"\x01two")))])
    await store.save([Write(rich_profile("bob"), 0, (("b1", b"\x01bob"),))])
    await store.set_aside("alice", T0, "bob")
    assert await store.load_scored([("alice", "e1"), ("bob", "e1"), ("bob", "e2")]) == [
        None,
        b"\x01one",
        b"\x01two",
    ]
    assert await store.merged_into(["alice", "bob", "carol"]) == {"alice": "bob"}
    # Then an erase of the account takes them too (they are listed in its index).
    assert await store.erase("bob", T0 + 1) is Erasure.ERASED
    assert await store.load_scored([("bob", "e1"), ("bob", "b1")]) == [None, None]
    assert await store.merged_into(["alice", "bob"]) == {"alice": "bob"}


async def test_a_replayed_set_aside_leaves_a_rebuilt_profiles_features(
    store: ProfileStore,
) -> None:
    """A merge read again after the user was rebuilt from newer events: the features of
    the rebuilt profile's scored events stay theirs (the in-memory store moved them to
    the account, which its labels then followed)."""
    await store.save([Write(rich_profile(), 0, (("old", b"\x01old"),))])
    assert (await store.set_aside("alice", T0, "bob"))[0] is Erasure.ERASED
    rebuilt = Profile("alice", version=1, events=1, updated=T0, erased_before=T0)
    assert await store.save([Write(rebuilt, 0, (("new", b"\x01new"),))]) == []
    assert (await store.set_aside("alice", T0, "bob"))[0] is Erasure.REPEATED
    scored = [("alice", "new"), ("bob", "new"), ("bob", "old")]
    assert await store.load_scored(scored) == [b"\x01new", None, b"\x01old"]


async def test_an_erase_drops_a_profile_set_aside(store: ProfileStore) -> None:
    await write(store, rich_profile(), 0)
    await store.set_aside("alice", T0, "bob")
    assert await store.erase("alice", T0 + 1) is Erasure.ABSENT
    assert await store.set_aside("alice", T0 + 1, "bob") == (Erasure.REPEATED, None)


# --- what only the Redis store can show -----------------------------------------


async def test_redis_moved_features_keep_the_time_they_had_left(
    redis_client: aioredis.Redis,
) -> None:
    store = RedisProfileStore(redis_client, scored_ttl_s=3600)
    await store.save([Write(rich_profile(), 0, (("e1", b"\x01one"),))])
    await redis_client.pexpire(scored_key("alice", "e1"), 600_000)  # as if 50 min had passed
    await store.set_aside("alice", T0, "bob")
    left = await redis_client.pttl(scored_key("bob", "e1"))
    assert 590_000 < left <= 600_000
    assert await redis_client.zrange(scored_index_key("bob"), 0, -1) == [b"e1"]
    assert 590_000 < await redis_client.pttl(scored_index_key("bob")) <= 600_000
    assert not await redis_client.exists(scored_index_key("alice"), scored_key("alice", "e1"))


async def test_redis_ids_with_braces_keep_their_keys_apart(redis_client: aioredis.Redis) -> None:
    """User `a`'s scored event `x}` and user `a}:x`'s index of scored events were one key:
    the second user's next write failed on a key of the wrong type, after the script
    had written part of it, and their erase left features behind."""
    store = RedisProfileStore(redis_client, scored_ttl_s=3600)
    braced = replace(rich_profile("a}:x", version=1), updated=T0)
    assert await store.save([Write(braced, 0, (("e1", b"\x01"),))]) == []
    assert await store.save([Write(rich_profile("a", 1), 0, (("x}", b"\x02"),))]) == []
    later = replace(braced, version=2, updated=T0 + 1)
    assert await store.save([Write(later, 1, (("e2", b"\x03"),), T0)]) == []
    assert (await load_one(store, "a}:x")).version == 2
    await store.erase("a}:x", T0 + 2)
    assert await store.load_scored([("a}:x", "e1"), ("a}:x", "e2"), ("a", "x}")]) == [
        None,
        None,
        b"\x02",
    ]


async def test_redis_an_erase_removes_the_keys_an_id_had_before_its_tag_was_a_digest(
    redis_client: aioredis.Redis,
) -> None:
    """Earlier versions kept `a}:x` under `{a}:x}`: an erase must leave none of it."""
    old = ["profile:{a}:x}", "profile-state:{a}:x}", "profile-erased:{a}:x}"]
    await redis_client.hset(old[0], mapping={"version": "3", "events": "3"})
    await redis_client.set(old[1], b'{"cats":{}}')
    await redis_client.set(old[2], b'{"erased":1}')
    await redis_client.set(scored_key("a", "x}"), b"\x01")  # user a's, by the old names too
    store = RedisProfileStore(redis_client)
    assert await store.save([Write(rich_profile("a}:x", 1), 0)]) == []
    await store.erase("a}:x", T0)
    assert await redis_client.exists(*old) == 0
    assert await store.read_profile("a}:x") is None
    assert await store.load_scored([("a", "x}")]) == [b"\x01"]


@pytest.mark.parametrize("cached", [True, False])
async def test_redis_vectors_a_profile_no_longer_has_leave_the_hash(
    redis_client: aioredis.Redis, cached: bool
) -> None:
    """Another encoder's vectors are dropped, not folded: their bytes stayed in the hash,
    beside the new `model`, where readers took them for the new encoder's."""
    vectors = StoredInterest(bytes(range(256)) * 6, bytes(6 * 256), 0.5, -1.0)
    first = replace(rich_profile(version=1), interest=vectors, model="encoder-a")
    store = RedisProfileStore(redis_client)
    assert await write(store, first, 0) == []
    no_short = replace(first, version=2, interest=replace(vectors, vec_short=None, log2_short=None))
    later = replace(first, version=3, interest=StoredInterest(), model="encoder-b")
    if not cached:
        store = RedisProfileStore(redis_client)
    assert await store.save([Write(no_short, 1, (), first.updated)]) == []
    assert await redis_client.hexists(profile_key("alice"), "vec_short") == 0
    assert await store.save([Write(later, 2, (), first.updated)]) == []
    stored = await store.read_profile("alice")
    assert stored is not None and "vec_long" not in stored and stored["model"] == "encoder-b"


async def test_redis_refused_write_leaves_an_erased_user_only_the_marker(
    redis_client: aioredis.Redis,
) -> None:
    """A worker that lost the user (its cached profile is stale) writes after an erase:
    refused, and nothing of it lands, in one script call per user as on a cluster."""
    store = RedisProfileStore(redis_client, users_per_call=1)
    profile = rich_profile(version=1)
    assert await store.save([Write(profile, 0, (("e1", b"\x01"),))]) == []
    await store.erase("alice", T0)
    late = Write(replace(profile, version=2), 1, (("e2", b"\x01"),), profile.updated)
    assert await store.save([late, Write(rich_profile("bob", 1), 0, (("b1", b"\x01"),))]) == [
        "alice"
    ]
    keys = {key.decode() async for key in redis_client.scan_iter(match="*{alice}*")}
    assert keys == {state_key("alice"), erased_key("alice")}
    assert await store.load_scored([("bob", "b1")]) == [b"\x01"]
    assert await redis_client.zrange(scored_index_key("bob"), 0, -1) == [b"b1"]


@pytest.mark.parametrize("ttl_s", [0, 60])
async def test_redis_ttl_applies_to_every_key_of_the_user(
    redis_client: aioredis.Redis, ttl_s: int
) -> None:
    store = RedisProfileStore(redis_client, ttl_s=ttl_s)
    await write(store, rich_profile(version=1), 0)
    keys = [profile_key("alice"), state_key("alice")]
    ttls = [await redis_client.ttl(key) for key in keys]
    if ttl_s:
        assert all(ttl_s - 5 <= ttl <= ttl_s for ttl in ttls), ttls
    else:
        assert ttls == [-1, -1]  # kept for ever


async def test_redis_ttl_of_0_keeps_a_profile_an_earlier_ttl_would_expire(
    redis_client: aioredis.Redis,
) -> None:
    """`PROFILER_PROFILE_TTL_S` set back to 0: the next write keeps both keys for ever,
    not the state alone (the hash then expired, and the user's counts with it)."""
    await write(RedisProfileStore(redis_client, ttl_s=60), rich_profile(version=1), 0)
    assert await write(RedisProfileStore(redis_client, ttl_s=0), rich_profile(version=2), 1) == []
    keys = [profile_key("alice"), state_key("alice")]
    assert [await redis_client.ttl(key) for key in keys] == [-1, -1]


async def test_redis_scored_index_lists_the_live_features_only(
    redis_client: aioredis.Redis,
) -> None:
    """The index an erase finds the features by: ids by expiry, the expired pruned."""
    store = RedisProfileStore(redis_client, scored_ttl_s=3600)
    first = replace(rich_profile(version=1), updated=T0)
    assert await store.save([Write(first, 0, (("e1", b"\x01"), ("e2", b"\x01")))]) == []
    later = replace(first, version=2, updated=T0 + 3_600_001)  # e1 and e2 expired by then
    assert await store.save([Write(later, 1, (("e3", b"\x01"),))]) == []
    index = scored_index_key("alice")
    assert await redis_client.zrange(index, 0, -1, withscores=True) == [
        (b"e3", float(T0 + 2 * 3_600_000 + 1))
    ]
    assert 3590 <= await redis_client.ttl(index) <= 3600


async def test_redis_refused_write_does_not_refresh_the_ttl(redis_client: aioredis.Redis) -> None:
    await write(RedisProfileStore(redis_client, ttl_s=60), rich_profile(version=1), 0)
    longer = RedisProfileStore(redis_client, ttl_s=3600)
    assert await write(longer, rich_profile(version=1), 0) == ["alice"]
    assert await redis_client.ttl(profile_key("alice")) <= 60


async def test_redis_store_goes_on_after_the_server_forgot_its_scripts(
    redis_client: aioredis.Redis,
) -> None:
    store = RedisProfileStore(redis_client)
    await write(store, rich_profile(version=1), 0)
    await redis_client.script_flush()  # a restart, or SCRIPT FLUSH by an operator
    scored = [("e-paid", b"\x01" + bytes(72))]
    assert await store.save([Write(rich_profile(version=2), 1, scored)]) == []
    await redis_client.script_flush()
    assert (await store.load(["alice"]))["alice"].version == 2  # no profile cache: a script
    assert await store.load_scored([("alice", "e-paid")]) == [scored[0][1]]


async def test_redis_keys_of_a_user_share_its_hash_tag(redis_client: aioredis.Redis) -> None:
    store = RedisProfileStore(redis_client)
    users = ["alice", "user:42", "ünï cödé"]
    await store.save([Write(rich_profile(u, 1), 0) for u in users])

    keys = {key.decode() async for key in redis_client.scan_iter(count=1000)}
    assert keys == {k for u in users for k in (profile_key(u), state_key(u))}
    for user_id in users:
        tagged = [k for k in keys if f"{{{user_id}}}" in k]
        assert len(tagged) == 2
        assert {key_slot(k.encode()) for k in tagged} == {key_slot(user_id.encode())}
        assert key_slot(seen_key(user_id).encode()) == key_slot(user_id.encode())
        assert key_slot(erased_key(user_id).encode()) == key_slot(user_id.encode())
    assert await redis_client.type(profile_key("alice")) == b"hash"
    assert await redis_client.type(state_key("alice")) == b"string"


async def test_redis_takes_over_the_dedupe_set_of_earlier_versions(
    redis_client: aioredis.Redis,
) -> None:
    """A profile written before the window moved into the state keeps its ids, then its set goes."""
    stored = replace(rich_profile(version=1), seen=b"")  # its state: the JSON alone, as then
    await write(RedisProfileStore(redis_client), stored, 0)
    legacy = {f"e{i}": T0 + i for i in (3, 1, 2)}
    await redis_client.zadd(seen_key("alice"), legacy)  # members by event ts, as written then

    store = RedisProfileStore(redis_client, cache_users=10)
    loaded = await load_one(store, "alice")
    assert loaded.seen == b"".join(event_digest(e) for e in ("e1", "e2", "e3"))
    assert await redis_client.exists(seen_key("alice")) == 1  # a load changes nothing
    assert await write(store, replace(loaded, version=2), 1) == []
    assert await redis_client.exists(seen_key("alice")) == 0
    assert (await load_one(RedisProfileStore(redis_client), "alice")).seen == loaded.seen


async def test_redis_keeps_a_profile_with_vectors_in_the_compact_encoding(
    redis_client: aioredis.Redis,
) -> None:
    """As deployed: the two 1,536-byte vectors do not push the hash out of its compact form."""
    assert await compact_hash_limit(redis_client) == COMPACT_HASH_VALUE_BYTES
    vectors = StoredInterest(bytes(range(256)) * 6, bytes(6 * 256), 0.5, -1.0)
    await write(RedisProfileStore(redis_client), replace(rich_profile(), interest=vectors), 0)
    encoding = await redis_client.object("encoding", profile_key("alice"))
    assert encoding in (b"ziplist", b"listpack")
    assert await redis_client.memory_usage(profile_key("alice"), samples=0) < 4096
