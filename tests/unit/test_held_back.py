"""Change messages the heartbeat held back: remembered, then published once due."""

from __future__ import annotations

import asyncio

import orjson

from profiling.pipeline import Record, Stages, apply_batch, held_back_changes
from profiling.profile import ProfileParams
from profiling.store import InMemoryProfileStore
from stream.held_back import HeldBackIndex

NOW = 1_750_000_000_000
HEARTBEAT_MS = 60_000
PARAMS = ProfileParams(heartbeat_ms=HEARTBEAT_MS)


def view(n: int, user: str = "alice", partition: int = 2) -> Record:
    body = {"event_id": f"e{n}", "user_id": user, "type": "view", "ts": NOW - 1000 + n,
            "item_id": "i1", "category": "shoes"}  # fmt: skip
    return Record("events", partition, n, user.encode(), orjson.dumps(body))


def purchase(n: int, user: str = "alice", partition: int = 2) -> Record:
    body = {"event_id": f"e{n}", "user_id": user, "type": "purchase", "ts": NOW - 1000 + n,
            "amount": 12.5}  # fmt: skip
    return Record("events", partition, n, user.encode(), orjson.dumps(body))


def test_the_index_gives_users_once_due_and_forgets_the_ones_published() -> None:
    index = HeldBackIndex(heartbeat_ms=1000)
    index.note({"a": (0, 100), "b": (1, 50), "c": (1, 500)}, published=())
    assert len(index) == 3 and index.next_due() == 1050
    assert index.take_due(1099) == {"b": (1, 1050)}
    index.note({}, published=["a"])  # a later write published it
    assert index.take_due(10_000) == {"c": (1, 1500)}
    assert index.next_due() is None and len(index) == 0


def test_the_index_keeps_skipped_users_and_hands_off_by_partition() -> None:
    index = HeldBackIndex(heartbeat_ms=1000)
    index.note({"a": (0, 0), "b": (1, 0), "c": (1, 0)}, published=())
    assert list(index.take_due(2000, skip={"a"})) == ["b", "c"]
    assert list(index.take_due(2000)) == ["a"]  # skipped while its batch was being written
    index.note({"d": (3, 0), "e": (4, 0), "f": (4, 9_000)}, published=())
    assert sorted(index.take_partitions({4})) == ["e", "f"]
    assert index.take_all() == {"d": (3, 1000)} and index.next_due() is None


def test_a_user_noted_again_keeps_one_entry_at_the_new_time() -> None:
    index = HeldBackIndex(heartbeat_ms=1000)
    for published_at in range(3000):  # outdated queue entries are dropped as they pile up
        index.note({"a": (0, published_at)}, published=())
    assert len(index) == 1 and index.next_due() == 3999
    assert index.take_due(3998) == {} and list(index.take_due(3999)) == ["a"]


def test_the_ledger_is_told_what_waits_and_what_is_done_last_change_first() -> None:
    index = HeldBackIndex(heartbeat_ms=1000)
    index.note({"a": (0, 0), "b": (1, 0), "c": (1, 0)}, published=())
    index.note({"a": (0, 500)}, published=["b"])  # a: due later; b: published by a write
    changes = index.unsaved()
    assert changes.waiting == {0: {"a": 1500}, 1: {"c": 1000}}
    assert changes.done == {1: {"b": 1000}}
    assert not index.unsaved()  # each change is given once
    taken = index.take_due(2000)
    assert taken == {"c": (1, 1000), "a": (0, 1500)}
    assert not index.unsaved()  # taken, not yet published: the ledger keeps them meanwhile
    index.note({"a": (0, 1800)}, published=())  # written again while being published
    index.settled(taken)
    changes = index.unsaved()
    assert changes.done == {1: {"c": 1000}} and changes.waiting == {0: {"a": 2800}}


def test_users_restored_from_the_ledger_wait_like_noted_ones() -> None:
    index = HeldBackIndex(heartbeat_ms=1000)
    index.note({"a": (2, 4000)}, published=())
    index.unsaved()
    assert index.restore(2, {"a": 1000, "b": 3000, "c": 9000}) == 2  # a: this worker's own
    assert not index.unsaved()  # the ledger has them already
    assert index.take_due(5000) == {"b": (2, 3000), "a": (2, 5000)}
    assert "c" in index and len(index) == 1


def test_held_back_counters_are_published_once_due_and_then_not_carried_again() -> None:
    store = InMemoryProfileStore()

    async def scenario() -> None:
        first = await apply_batch([view(1)], store, PARAMS, lambda: NOW)
        assert [user for user, _ in first.changes] == ["alice"] and not first.held_back
        quiet = await apply_batch([view(2), purchase(3)], store, PARAMS, lambda: NOW + 1000)
        assert not quiet.changes
        assert quiet.held_back == {"alice": (2, NOW)}  # partition, last published

        early = await held_back_changes(["alice"], store, PARAMS, NOW + 2000, Stages())
        assert not early.changes and not early.writes  # the heartbeat has not passed
        due_at = NOW + HEARTBEAT_MS
        held = await held_back_changes(["alice"], store, PARAMS, due_at, Stages())
        ((user, body),) = held.changes
        message = orjson.loads(body)
        assert user == "alice" and message["events"] == 3 and message["version"] == 2
        assert {"count:view", "count:purchase", "orders", "spend"} <= set(message["changed"])
        assert await store.save(held.writes) == []
        assert held.landed(()) == held.changes
        again = await held_back_changes(["alice"], store, PARAMS, due_at + 1, Stages())
        assert not again.changes  # published: nothing waits any more

        (stored,) = (await store.load(["alice"])).values()
        assert (stored.published_version, stored.published_at) == (2, due_at)
        later = await apply_batch([view(4)], store, PARAMS, lambda: due_at + 1000)
        assert not later.changes and later.held_back == {"alice": (2, due_at)}
        handed = await held_back_changes(
            ["alice"], store, PARAMS, due_at + 2000, Stages(), handing_off=True
        )
        # Only what changed since the last message: not the purchase's fields again.
        (changed,) = [orjson.loads(body)["changed"] for _, body in handed.changes]
        assert "count:view" in changed
        assert not {"count:purchase", "orders", "spend"} & set(changed)

    asyncio.run(scenario())


def test_a_profile_written_since_is_not_marked_by_a_stale_publication() -> None:
    store = InMemoryProfileStore()

    async def scenario() -> None:
        await apply_batch([view(1)], store, PARAMS, lambda: NOW)
        await apply_batch([view(2)], store, PARAMS, lambda: NOW + 1000)
        held = await held_back_changes(["alice"], store, PARAMS, NOW + HEARTBEAT_MS, Stages())
        await apply_batch([view(3)], store, PARAMS, lambda: NOW + 2000)  # another write lands
        refused = await store.save(held.writes)
        assert refused == ["alice"] and held.landed(refused) == []  # compare-and-set: refused
        (stored,) = (await store.load(["alice"])).values()
        assert stored.version == 3 and stored.published_version == 1

    asyncio.run(scenario())


def test_users_from_the_ledger_are_told_apart_until_noted_here() -> None:
    index = HeldBackIndex(heartbeat_ms=1000)
    index.restore(0, {"a": 100, "b": 100, "c": 100})
    index.note({"b": (0, 500)}, published=["c"])  # written here since: this worker's own
    taken = index.take_due(5000)
    assert index.restored(taken) == {"a": (0, 100)}
    assert index.restored(taken) == {}  # told once


def test_users_from_the_ledger_are_published_again_though_marked_published() -> None:
    """Their last owner may have marked them published and died before the message went
    out: a repeat is harmless, a lost message is not. An erased user stays unpublished."""
    store = InMemoryProfileStore()

    async def scenario() -> None:
        await apply_batch([view(1), view(2, "bob")], store, PARAMS, lambda: NOW)
        await apply_batch([view(3), view(4, "bob")], store, PARAMS, lambda: NOW + 1000)
        marked = await held_back_changes(["alice"], store, PARAMS, NOW + 2000, Stages(),
                                         handing_off=True)  # fmt: skip
        assert await store.save(marked.writes) == []  # marked; its message never sent
        await store.erase("bob", NOW + 3000)
        usual = await held_back_changes(["alice", "bob"], store, PARAMS, NOW + HEARTBEAT_MS,
                                        Stages())  # fmt: skip
        assert not usual.changes
        again = await held_back_changes(["alice", "bob"], store, PARAMS, NOW + HEARTBEAT_MS,
                                        Stages(), again=True)  # fmt: skip
        ((user, body),) = again.changes
        assert user == "alice" and orjson.loads(body)["events"] == 2
        assert orjson.loads(body)["changed"] == orjson.loads(marked.changes[0][1])["changed"]

    asyncio.run(scenario())
