"""Interest vectors of a merge: the sum of both users', also when only one of them has any."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from profiling.commands import apply_commands
from profiling.embedding_cache import EmbeddingLRU
from profiling.encoder import HashingEncoder
from profiling.interests import InterestModel
from profiling.merging import merge_profiles
from profiling.pipeline import Record, Stages, apply_batch
from profiling.profile import Profile, ProfileParams
from profiling.store import InMemoryProfileStore
from profiling.vectors import VectorParams, cosine_drift, decode_vector, drift_sketch

NOW = 1_750_000_000_000
HOUR = 3_600_000
PARAMS = ProfileParams()
DIM = 16

LOGINS: list[dict[str, Any]] = [
    {"event_id": "k-1", "type": "login", "ts": NOW - 5 * HOUR, "success": True},
    {"event_id": "k-2", "type": "login", "ts": NOW - HOUR, "success": True},
]
BROWSING: list[dict[str, Any]] = [
    {"event_id": "a-1", "type": "view", "ts": NOW - 30 * HOUR, "item_id": "i1",
     "title": "trail running shoes"},
    {"event_id": "a-2", "type": "add_to_cart", "ts": NOW - 29 * HOUR, "item_id": "i1"},
    {"event_id": "a-3", "type": "search", "ts": NOW - 3 * HOUR, "query": "rain jacket"},
]  # fmt: skip


def records(user: str, bodies: list[dict[str, Any]], first_offset: int) -> list[Record]:
    return [
        Record("events", 0, first_offset + i, user.encode(), orjson.dumps(body | {"user_id": user}))
        for i, body in enumerate(bodies)
    ]


def stages() -> Stages:
    return Stages(InterestModel(HashingEncoder(dim=DIM), EmbeddingLRU()))


async def built(log: list[Record], users: list[str]) -> dict[str, Profile]:
    store = InMemoryProfileStore()
    await apply_batch(log, store, PARAMS, lambda: NOW, stages())
    return await store.load(users)


def assert_same_vectors(got: Profile, expected: Profile) -> None:
    assert got.interest is not None and expected.interest is not None
    mine, theirs = got.interest, expected.interest
    for a, b in ((mine.vec_long, theirs.vec_long), (mine.vec_short, theirs.vec_short)):
        assert a is not None and b is not None
        np.testing.assert_allclose(decode_vector(a), decode_vector(b), atol=1e-5)
    assert got.model == expected.model


def test_a_visitor_merged_into_an_account_without_vectors_brings_theirs() -> None:
    """The account has only logged in: the merged vectors are the visitor's, as if the
    account had made every event, and the next events fold on from them."""
    later = [{"event_id": "k-3", "type": "view", "ts": NOW, "item_id": "i2", "title": "tent"}]

    async def scenario() -> tuple[Profile, Profile]:
        store, engine = InMemoryProfileStore(), stages()
        log = records("anon", BROWSING, 0) + records("k", LOGINS, 10)
        await apply_batch(log, store, PARAMS, lambda: NOW, engine)
        merge = {"command": "merge", "from_user_id": "anon", "user_id": "k"}
        command = Record("profile-commands", 0, 0, b"k", orjson.dumps(merge), NOW)
        done = await apply_commands([command], store, NOW, PARAMS, engine)
        assert done.commands == {("merge", "merged"): 1}
        await apply_batch(records("k", later, 20), store, PARAMS, lambda: NOW, engine)
        oracle = await built(records("k", BROWSING + LOGINS + later, 0), ["k"])
        return (await store.load(["k"]))["k"], oracle["k"]

    merged, oracle = asyncio.run(scenario())
    assert_same_vectors(merged, oracle)
    assert merged.interest is not None and oracle.interest is not None
    for mine, theirs in (
        (merged.interest.log2_long, oracle.interest.log2_long),
        (merged.interest.log2_short, oracle.interest.log2_short),
    ):
        assert mine is not None and theirs is not None
        assert math.isclose(mine, theirs, abs_tol=1e-6)


def test_either_side_alone_gives_its_vectors_and_encoder() -> None:
    profiles = asyncio.run(
        built(records("anon", BROWSING, 0) + records("k", LOGINS, 10), ["anon", "k"])
    )
    account, visitor = profiles["k"], profiles["anon"]
    assert account.interest is not None and account.interest.vec_long is None
    assert account.model is not None  # the encoder ran for the batch, with nothing to add
    cases = [
        (account, visitor),  # an account with no vectors yet
        (replace(account, interest=None, model=None), visitor),  # nor a vector step ever
        (visitor, account),  # the visitor brings none
        (visitor, replace(account, interest=None, model=None)),
    ]
    for known, taken in cases:
        merged = merge_profiles(
            known, taken, b"", params=PARAMS, vectors=VectorParams(), now_ms=NOW
        )
        assert merged.interest is not None
        assert merged.interest.vec_long == visitor.interest.vec_long  # type: ignore[union-attr]
        assert merged.interest.vec_short == visitor.interest.vec_short  # type: ignore[union-attr]
        assert merged.model == visitor.model


def test_vectors_stored_without_their_time_keep_the_owners_last_seen() -> None:
    """Older data carries no reference time: it is decayed to its owner's last_seen,
    which the merged profile's later last_seen must not replace."""
    profiles = asyncio.run(
        built(records("anon", BROWSING, 0) + records("k", LOGINS, 10), ["anon", "k"])
    )
    visitor = profiles["anon"]
    assert visitor.interest is not None and visitor.interest.ref_ms == visitor.last_seen
    legacy = replace(visitor, interest=replace(visitor.interest, ref_ms=None))
    merged = merge_profiles(
        profiles["k"], legacy, b"", params=PARAMS, vectors=VectorParams(), now_ms=NOW
    )
    assert merged.last_seen > visitor.last_seen
    assert merged.interest is not None and merged.interest.ref_ms == visitor.last_seen


def test_vectors_of_another_encoder_are_not_summed_the_accounts_stay() -> None:
    profiles = asyncio.run(built(records("anon", BROWSING, 0), ["anon"]))
    visitor = profiles["anon"]
    other = asyncio.run(built(records("k", BROWSING[:1], 10), ["k"]))["k"]
    account = replace(other, model="another-encoder")
    merged = merge_profiles(
        account, visitor, b"", params=PARAMS, vectors=VectorParams(), now_ms=NOW
    )
    assert merged.interest is account.interest and merged.model == "another-encoder"


def test_drift_after_a_merge_is_measured_from_the_merged_vector_it_published() -> None:
    """The account kept its own last sketch: turning back to the account's old interest
    published nothing, though readers held the merged vector, far from it."""
    quiet = ProfileParams(heartbeat_ms=100 * 24 * HOUR)
    shoes = {"type": "view", "item_id": "s", "title": "trail running shoes"}
    mixer = {"type": "purchase", "item_id": "m", "amount": 1.0, "title": "kitchen stand mixer"}
    account = [{"event_id": "k-1", "ts": NOW - 10 * HOUR} | shoes]
    visitor = [{"event_id": f"a-{i}", "ts": NOW - 9 * HOUR} | mixer for i in range(5)]
    back = [{"event_id": f"k-{i}", "ts": NOW - 8 * HOUR + i} | shoes for i in range(2, 40)]

    async def scenario() -> tuple[Profile, Profile, list[Any]]:
        store, engine = InMemoryProfileStore(), stages()
        log = records("k", account, 0) + records("anon", visitor, 10)
        await apply_batch(log, store, quiet, lambda: NOW, engine)
        merge = {"command": "merge", "from_user_id": "anon", "user_id": "k"}
        command = Record("profile-commands", 0, 0, b"k", orjson.dumps(merge), NOW)
        await apply_commands([command], store, NOW, quiet, engine)
        merged = (await store.load(["k"]))["k"]
        result = await apply_batch(records("k", back, 100), store, quiet, lambda: NOW, engine)
        return merged, (await store.load(["k"]))["k"], result.changes

    merged, after, changes = asyncio.run(scenario())
    assert merged.interest is not None and merged.interest.vec_long is not None
    assert merged.interest.sketch == drift_sketch(decode_vector(merged.interest.vec_long))
    assert after.interest is not None
    assert cosine_drift(merged.interest.vec_long, after.interest.vec_long) > 0.05
    assert [orjson.loads(body)["user_id"] for _, body in changes] == ["k"]


def test_vectors_under_a_former_id_of_the_encoder_are_summed_with_the_current_ones() -> None:
    """A model folder was named by its name alone: an account last written under that
    name lost the visitor's vectors of the same model, named by its digest now."""
    mine = [{"event_id": "k-9", "type": "view", "ts": NOW - 2 * HOUR, "item_id": "i9",
             "title": "camping tent"}]  # fmt: skip

    async def scenario() -> tuple[Profile, Profile]:
        store, engine = InMemoryProfileStore(), stages()
        assert engine.interests is not None
        encoder = engine.interests.encoder
        await apply_batch(records("k", mine, 10), store, PARAMS, lambda: NOW, engine)
        encoder.former_ids = (encoder.model_id,)  # type: ignore[attr-defined]
        encoder.model_id = "model-0123456789abcdef"  # type: ignore[misc]
        await apply_batch(records("anon", BROWSING, 0), store, PARAMS, lambda: NOW, engine)
        merge = {"command": "merge", "from_user_id": "anon", "user_id": "k"}
        command = Record("profile-commands", 0, 0, b"k", orjson.dumps(merge), NOW)
        await apply_commands([command], store, NOW, PARAMS, engine)
        oracle = await built(records("k", BROWSING + mine, 0), ["k"])
        return (await store.load(["k"]))["k"], oracle["k"]

    merged, oracle = asyncio.run(scenario())
    assert merged.model == "model-0123456789abcdef"
    assert_same_vectors(merged, replace(oracle, model=merged.model))


def test_vectors_kept_beside_another_encoders_keep_their_time() -> None:
    """An account's vectors stored without their time, kept beside a visitor's of another
    encoder, were taken as decayed to the visitor's later last_seen at the next fold."""
    profiles = asyncio.run(built(records("k", BROWSING[:1], 10), ["k"]))
    account = profiles["k"]
    assert account.interest is not None
    legacy = replace(account, interest=replace(account.interest, ref_ms=None))
    visitor = asyncio.run(built(records("anon", BROWSING, 0), ["anon"]))["anon"]
    visitor = replace(visitor, model="another-encoder")
    merged = merge_profiles(legacy, visitor, b"", params=PARAMS, vectors=VectorParams(), now_ms=NOW)
    assert merged.last_seen > account.last_seen and merged.model == account.model
    assert merged.interest is not None and merged.interest.ref_ms == account.last_seen
