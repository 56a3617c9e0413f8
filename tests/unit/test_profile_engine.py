"""The aggregate engine against a from-scratch numpy recount, in any batch split."""

from __future__ import annotations

import asyncio
import copy
import itertools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from profiling.events import EVENT_TYPES, Event, decode_event
from profiling.pipeline import Record, apply_batch
from profiling.profile import (
    DEFAULT_CATEGORY_WEIGHTS,
    Delivery,
    Profile,
    ProfileParams,
    apply_deliveries,
    event_digest,
    evolve,
    in_window,
)
from profiling.store import InMemoryProfileStore, public_fields

NOW = 1_750_000_000_000
PARAMS = ProfileParams(category_half_life_ms=3_600_000.0, heartbeat_ms=0)
TYPES = list(EVENT_TYPES)


def make_event(  # noqa: PLR0917 - one row of the generated log
    i: int, user: str, kind: str, ts: int, category: str | None, amount: float
) -> dict:
    body: dict = {"event_id": f"e{i}", "user_id": user, "type": kind, "ts": ts}
    if kind in ("view", "click", "add_to_cart", "remove_from_cart", "review"):
        body["item_id"] = f"item{i % 7}"
    if kind == "search":
        body["query"] = "running shoes"
    if kind == "purchase":
        body["amount"] = amount
    if category:
        body["category"] = category
    return body


events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob", "carol"]),
        st.sampled_from(TYPES),
        st.integers(min_value=NOW - 10 * 3_600_000, max_value=NOW),
        st.sampled_from([None, "shoes", "phones", "books.fiction"]),
        st.floats(min_value=0, max_value=1e4, allow_nan=False),
    ),
    min_size=1,
    max_size=60,
)


def to_records(rows: Sequence[tuple]) -> list[Record]:
    records = []
    for i, (user, kind, ts, category, amount) in enumerate(rows):
        body = make_event(i, user, kind, ts, category, amount)
        records.append(Record("ev", 0, i, user.encode(), orjson.dumps(body)))
    return records


def split(records: list[Record], cuts: list[int]) -> list[list[Record]]:
    bounds = sorted({c % (len(records) + 1) for c in cuts} | {0, len(records)})
    return [records[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def run_batches(batches: list[list[Record]], store: InMemoryProfileStore | None = None):
    store = store or InMemoryProfileStore()

    async def go() -> None:
        for batch in batches:
            await apply_batch(batch, store, PARAMS, lambda: NOW)

    asyncio.run(go())
    return store


def oracle(records: Sequence[Record], user: str) -> dict:
    """Recount a user's aggregates from every distinct event, with numpy."""
    events: dict[str, Event] = {}
    for record in records:
        event = decode_event(record.value or b"", NOW)
        assert isinstance(event, Event)
        if event.user_id == user:
            events.setdefault(event.event_id, event)
    chosen = list(events.values())
    ts = np.array([e.ts for e in chosen], dtype=np.float64)
    last_seen = int(ts.max())
    scores: dict[str, float] = {}
    for category in {e.category for e in chosen if e.category}:
        mask = np.array([e.category == category for e in chosen])
        weights = np.array([DEFAULT_CATEGORY_WEIGHTS[e.type] for e in chosen])[mask]
        decay = np.exp2(-(last_seen - ts[mask]) / PARAMS.category_half_life_ms)
        score = float(np.sum(weights * decay))
        if score:
            scores[category] = score
    purchases = [e.amount or 0.0 for e in chosen if e.type == "purchase"]
    return {
        "events": len(chosen),
        "counts": Counter(e.type for e in chosen),
        "spend": float(np.sum(purchases)) if purchases else 0.0,
        "orders": len(purchases),
        "first_seen": int(ts.min()),
        "last_seen": last_seen,
        "scores": scores,
    }


def assert_matches_oracle(store: InMemoryProfileStore, records: Sequence[Record]) -> None:
    users = {orjson.loads(r.value or b"{}")["user_id"] for r in records}
    loaded = asyncio.run(store.load(list(users)))
    for user in users:
        profile, expected = loaded[user], oracle(records, user)
        assert profile.events == expected["events"]
        assert Counter(profile.counts) == expected["counts"]
        assert math.isclose(profile.spend, expected["spend"], rel_tol=1e-9, abs_tol=1e-6)
        assert profile.orders == expected["orders"]
        assert profile.first_seen == expected["first_seen"]
        assert profile.last_seen == expected["last_seen"]
        assert profile.category_scores.keys() == expected["scores"].keys()
        for name, score in expected["scores"].items():
            assert math.isclose(profile.category_scores[name], score, rel_tol=1e-9)


@settings(max_examples=60, deadline=None)
@given(rows=events_strategy, cuts=st.lists(st.integers(0, 100), max_size=6))
def test_aggregates_match_recount_in_any_batch_split(rows: list[tuple], cuts: list[int]) -> None:
    records = to_records(rows)
    store = run_batches(split(records, cuts))
    assert_matches_oracle(store, records)


@settings(max_examples=30, deadline=None)
@given(rows=events_strategy, cuts=st.lists(st.integers(0, 100), max_size=4))
def test_replaying_any_batch_changes_nothing(rows: list[tuple], cuts: list[int]) -> None:
    records = to_records(rows)
    batches = split(records, cuts)
    store = run_batches(batches)
    before = copy.deepcopy((store._hashes, store._states))
    run_batches(batches, store)  # a crash before every commit: the whole log again
    assert (store._hashes, store._states) == before


@settings(max_examples=30, deadline=None)
@given(rows=events_strategy)
def test_resent_events_are_applied_once(rows: list[tuple]) -> None:
    records = to_records(rows)
    resent = [
        Record(r.topic, r.partition, r.offset + len(records), r.key, r.value) for r in records
    ]
    store = run_batches([records, resent])
    assert_matches_oracle(store, records)


def view(i: int, ts: int, offset: int) -> Delivery:
    event = decode_event(orjson.dumps(make_event(i, "u", "view", ts, "shoes", 0)), NOW)
    assert isinstance(event, Event)
    return Delivery(event, 0, offset)


def test_the_dedupe_window_keeps_the_last_applied_ids() -> None:
    params = ProfileParams(dedupe_window=4)
    profile = Profile("u")
    for i in range(6):  # one event per batch; e0 and e1 leave the window
        profile = apply_deliveries(profile, [view(i, NOW - i, i)], params, NOW).profile
    assert profile.seen == b"".join(event_digest(f"e{i}") for i in range(2, 6))
    resent = [view(i, NOW - i, 10 + i) for i in (5, 2, 1)]  # new offsets: producer re-sends
    outcome = apply_deliveries(profile, resent, params, NOW)
    assert outcome.duplicates == 2  # e5 and e2 are known
    assert [e.event_id for e in outcome.applied] == ["e1"]  # e1 was forgotten: applied again


def test_a_late_event_is_as_protected_as_a_recent_one() -> None:
    """The window is the last ids applied, whatever their times: a late event is one of them."""
    params = ProfileParams(dedupe_window=4)
    profile = apply_deliveries(Profile("u"), [view(0, NOW, 0)], params, NOW).profile
    late = apply_deliveries(profile, [view(1, NOW - 30 * 86_400_000, 1)], params, NOW).profile
    again = apply_deliveries(late, [view(1, NOW - 30 * 86_400_000, 2)], params, NOW)
    assert again.duplicates == 1 and not again.wrote


def test_one_batch_larger_than_the_window_keeps_its_last_ids() -> None:
    params = ProfileParams(dedupe_window=4)
    deliveries = [view(i, NOW - (i * 7919) % 1000, i) for i in range(10)]
    outcome = apply_deliveries(Profile("u"), deliveries, params, NOW)
    assert outcome.profile.seen == b"".join(event_digest(f"e{i}") for i in range(6, 10))


def test_a_window_entry_matches_only_on_its_own_boundary() -> None:
    first, second = event_digest("e1"), event_digest("e2")
    seen = first + second
    assert in_window(seen, first) and in_window(seen, second)
    assert not in_window(seen, seen[4:12])  # the bytes are there, straddling two entries
    assert not in_window(b"", first)
    straddled = bytes(4) + first[:4] + first[4:] + bytes(4)  # `first` across two entries
    assert not in_window(straddled, first)
    assert in_window(straddled + first, first)  # found past the straddling occurrence


@settings(max_examples=60, deadline=None)
@given(rows=events_strategy, cuts=st.lists(st.integers(0, 100), max_size=6))
def test_the_changed_fields_bring_a_stored_hash_up_to_date(
    rows: list[tuple], cuts: list[int]
) -> None:
    """What a write sends when the store knows the hash's profile: no stale field left."""
    held: dict[str, Profile] = {}
    hashes: dict[str, dict[str, str]] = {}
    for batch in split(to_records(rows), cuts):
        by_user: dict[str, list[Delivery]] = {}
        for record in batch:
            event = decode_event(record.value or b"", NOW)
            assert isinstance(event, Event)
            by_user.setdefault(event.user_id, []).append(Delivery(event, 0, record.offset))
        for user, deliveries in by_user.items():
            before = held.get(user, Profile(user))
            stored = dict(hashes.get(user, {}))
            after = apply_deliveries(before, deliveries, PARAMS, NOW).profile
            stored.update(public_fields(after, before if before.version else None))
            assert stored == public_fields(after)
            held[user], hashes[user] = after, stored


def test_the_changed_fields_include_the_models_verdicts() -> None:
    base = evolve(Profile("ann"), version=1, counts={"view": 1}, events=1, model="m1")
    stored = public_fields(base)
    steps = [
        {"segment": 2},
        {"risk": 0.4, "risk_reasons": '[{"feature":"new_device"}]'},
        {"risk_reasons": "[]"},  # same risk, other reasons
        {"segment": 5, "model": "m2", "counts": {"view": 1, "login": 1}},
        {"spend": 12.5, "orders": 1, "category_scores": {"books": 1.0}},
    ]
    profile = base
    for version, changes in enumerate(steps, start=2):
        after = evolve(profile, version=version, **changes)
        sent = public_fields(after, profile)
        assert set(sent) >= {"version", "updated", "events"}
        assert "first_seen" not in sent  # unchanged fields are not sent
        stored.update(sent)
        assert stored == public_fields(after)
        profile = after


@given(st.floats(min_value=0, max_value=1e18, allow_nan=False))
@example(1e-05)
@example(1e16)
def test_numbers_in_the_hash_are_decimal_and_read_back_the_same(value: float) -> None:
    """The layout says numbers in decimal: never an exponent (1e-05, 1e+16)."""
    rounded = round(value, 6)
    fields = public_fields(evolve(Profile("ann"), version=1, spend=rounded, risk=rounded))
    for name in ("spend", "risk"):
        assert "e" not in fields[name].lower(), fields[name]
        assert float(fields[name]) == rounded


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=2, max_size=30),
       st.integers(min_value=1, max_value=29))  # fmt: skip
@example([4e-7, 4e-7], 1)  # 1e-06 summed whole, 0.0 when each batch's sum is rounded
def test_spend_does_not_depend_on_the_batching(amounts: list[float], cut: int) -> None:
    deliveries = []
    for i, amount in enumerate(amounts):
        body = {"event_id": f"e{i}", "user_id": "u", "type": "purchase", "ts": NOW}
        event = decode_event(orjson.dumps({**body, "amount": amount}), NOW)
        assert isinstance(event, Event)
        deliveries.append(Delivery(event, 0, i))
    whole = apply_deliveries(Profile("u"), deliveries, PARAMS, NOW).profile
    first = apply_deliveries(Profile("u"), deliveries[:cut], PARAMS, NOW).profile
    split = apply_deliveries(first, deliveries[cut:], PARAMS, NOW).profile
    assert whole.spend == split.spend


def test_late_event_counts_but_never_moves_last_seen_back() -> None:
    records = to_records(
        [("alice", "view", NOW, "shoes", 0.0), ("alice", "view", NOW - 5000, None, 0)]
    )
    store = run_batches([[records[0]], [records[1]]])
    profile = asyncio.run(store.load(["alice"]))["alice"]
    assert profile.events == 2
    assert profile.last_seen == NOW
    assert profile.first_seen == NOW - 5000


def test_apply_does_not_mutate_its_inputs() -> None:
    event = decode_event(orjson.dumps(make_event(1, "u", "purchase", NOW, "shoes", 10.0)), NOW)
    assert isinstance(event, Event)
    profile = Profile("u", version=3, counts={"view": 2}, category_scores={"shoes": 1.0})
    deliveries = [Delivery(event, 0, 5)]
    snapshot = copy.deepcopy((profile, deliveries))
    outcome = apply_deliveries(profile, deliveries, PARAMS, NOW)
    assert outcome.profile.version == 4
    assert (profile, deliveries) == snapshot


def test_category_table_is_bounded() -> None:
    rows = [("alice", "view", NOW - i, f"cat{i}", 0.0) for i in range(100)]
    params = ProfileParams(category_slots=16)
    store = InMemoryProfileStore()

    async def go() -> None:
        await apply_batch(to_records(rows), store, params, lambda: NOW)

    asyncio.run(go())
    profile = asyncio.run(store.load(["alice"]))["alice"]
    assert len(profile.category_scores) == 16
    assert len(profile.top_categories()) == 10
    # The newest (least decayed) categories survive.
    assert set(profile.category_scores) == {f"cat{i}" for i in range(16)}


def test_stale_writer_loses_the_version_race() -> None:
    store = InMemoryProfileStore()
    records = to_records([("alice", "view", NOW, "shoes", 0.0)])
    run_batches([records], store)
    loaded = asyncio.run(store.load(["alice"]))["alice"]
    # Another worker wrote meanwhile: a write computed from the old version is refused.
    run_batches([[Record("ev", 0, 1, b"alice", records[0].value.replace(b'"e0"', b'"e9"'))]], store)
    from profiling.store import Write

    conflicts = asyncio.run(store.save([Write(loaded, loaded.version - 1)]))
    assert conflicts == ["alice"]


def test_publication_rules() -> None:
    params = ProfileParams(heartbeat_ms=60_000)
    first = decode_event(orjson.dumps(make_event(1, "u", "view", NOW, "shoes", 0)), NOW)
    second = decode_event(orjson.dumps(make_event(2, "u", "view", NOW + 1, "shoes", 0)), NOW)
    assert isinstance(first, Event) and isinstance(second, Event)
    new = apply_deliveries(Profile("u"), [Delivery(first, 0, 0)], params, NOW)
    assert new.publish  # a new user is always news
    quiet = apply_deliveries(new.profile, [Delivery(second, 0, 1)], params, NOW + 1000)
    assert not quiet.publish  # counters only, heartbeat not yet due
    later = apply_deliveries(new.profile, [Delivery(second, 0, 1)], params, NOW + 61_000)
    assert later.publish
    replay = apply_deliveries(new.profile, [Delivery(first, 0, 0)], params, NOW + 5)
    assert replay.publish and not replay.wrote  # the write landed; its messages may not have
    assert "count:view" in replay.changed
    # The fetch after a crash brings the replayed record and a newer one: the lost
    # message is still due, with what it carried, though no heartbeat is.
    both = [Delivery(first, 0, 0), Delivery(second, 0, 1)]
    replay_and_more = apply_deliveries(new.profile, both, params, NOW + 5)
    assert replay_and_more.publish and replay_and_more.applied == [second]
    assert {"count:view", "first_seen", "categories"} <= replay_and_more.changed
