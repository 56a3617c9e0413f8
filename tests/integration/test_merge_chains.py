"""Merges that chain, loop or are replayed, through the engine, over both stores.

A visitor's event older than their merge that arrives after it is forwarded.
Where the user it was merged into was merged on in turn (a visitor into a guest
account, the guest into a registered one), or merged back (two ids of one
person merged each way), the event must end at the user whose profile holds
the merged events now: nothing valid is lost, and nothing bounces for ever.
Forwarding is played here as the worker does it: each forwarded record is
delivered again on the events topic, under the key it was sent with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from profiling.commands import apply_commands
from profiling.labels import apply_labels
from profiling.models import ProfileModels
from profiling.pipeline import BatchResult, Record, Stages, apply_batch
from profiling.profile import Profile, ProfileParams
from profiling.store import InMemoryProfileStore, ProfileStore
from stream.redis_store import RedisProfileStore, connect

NOW = 1_750_000_000_000
T1 = NOW - 3_600_000  # the first merge
T2 = T1 + 60_000  # the second
PARAMS = ProfileParams()
EVENTS = "behavior-events"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ProfileStore]:
    if request.param == "memory":
        yield InMemoryProfileStore()
        return
    client = connect(request.getfixturevalue("redis_url"))
    try:
        yield RedisProfileStore(client, cache_users=100)
    finally:
        await client.aclose()


class Shop:
    """The events and commands topics of one store, with their next offsets."""

    def __init__(
        self, store: ProfileStore, params: ProfileParams = PARAMS, stages: Stages | None = None
    ) -> None:
        self.store = store
        self.params = params
        self.stages = stages or Stages()
        self.offset = 0
        self.sent: list[tuple[str, bytes]] = []  # forwarded, not delivered yet

    def _next(self) -> int:
        self.offset += 1
        return self.offset

    async def events(self, *bodies: dict[str, object]) -> BatchResult:
        records = [
            Record(EVENTS, 0, self._next(), str(b["user_id"]).encode(), orjson.dumps(b))
            for b in bodies
        ]
        return await self._fold(records)

    async def deliver_forwarded(self) -> BatchResult:
        """The records forwarded so far, read from the events topic (once)."""
        sent, self.sent = self.sent, []
        records = [Record(EVENTS, 0, self._next(), key.encode(), body) for key, body in sent]
        return await self._fold(records)

    async def settle(self, most: int = 20) -> list[BatchResult]:
        """Deliver forwarded records until none is left (or `most` rounds, a loop)."""
        rounds = []
        for _ in range(most):
            if not self.sent:
                return rounds
            rounds.append(await self.deliver_forwarded())
        raise AssertionError(f"still forwarding after {most} rounds: {self.sent}")

    async def _fold(self, records: list[Record]) -> BatchResult:
        result = await apply_batch(records, self.store, self.params, lambda: NOW, self.stages)
        self.sent += result.forwarded
        return result

    async def merge(self, visitor: str, account: str, at_ms: int) -> BatchResult:
        body = {"command": "merge", "from_user_id": visitor, "user_id": account}
        record = Record("profile-commands", 0, self._next(), account.encode(),
                        orjson.dumps(body), at_ms)  # fmt: skip
        return await apply_commands([record], self.store, NOW, self.params, self.stages)

    async def erase(self, user: str, at_ms: int) -> BatchResult:
        body = {"command": "erase", "user_id": user}
        record = Record("profile-commands", 0, self._next(), user.encode(),
                        orjson.dumps(body), at_ms)  # fmt: skip
        return await apply_commands([record], self.store, NOW, self.params, self.stages)

    async def profiles(self, *users: str) -> list[Profile]:
        return list((await self.store.load(list(users), cached=False)).values())


def login(event_id: str, user: str, ts: int) -> dict[str, object]:
    return {"event_id": event_id, "user_id": user, "type": "login", "ts": ts}


def events_of(shop_profiles: list[Profile]) -> list[int]:
    return [p.events for p in shop_profiles]


async def test_a_late_event_of_a_visitor_merged_on_twice_reaches_the_last_account(
    store: ProfileStore,
) -> None:
    """v -> a, then a -> b: a late event of v belongs to b, which holds both now."""
    shop = Shop(store)
    await shop.events(login("v1", "v", T1 - 500), login("a1", "a", T1 - 400))
    await shop.events(login("b1", "b", T1 - 300))
    await shop.merge("v", "a", T1)
    await shop.merge("a", "b", T2)
    late = await shop.events(login("v2", "v", T1 - 100))
    assert late.outcomes["forwarded"] == 1
    rounds = await shop.settle()
    applied = sum(r.outcomes["applied"] for r in rounds)
    suppressed = sum(r.outcomes["suppressed"] for r in [late, *rounds])
    assert (applied, suppressed) == (1, 0)
    assert events_of(await shop.profiles("v", "a", "b")) == [0, 0, 4]


async def test_an_event_forwarded_before_its_account_merged_on_is_passed_on(
    store: ProfileStore,
) -> None:
    """v's late event is forwarded to a while a is live; a -> b lands before it is read."""
    shop = Shop(store)
    await shop.events(login("v1", "v", T1 - 500), login("a1", "a", T1 - 400))
    await shop.merge("v", "a", T1)
    await shop.events(login("v2", "v", T1 - 100))
    assert [key for key, _ in shop.sent] == ["a"]
    await shop.merge("a", "b", T2)
    rounds = await shop.settle()
    assert sum(r.outcomes["applied"] for r in rounds) == 1
    assert events_of(await shop.profiles("v", "a", "b")) == [0, 0, 3]


@pytest.mark.parametrize("forwarded_first", [False, True])
async def test_users_merged_into_each_other_keep_their_late_events_on_the_live_one(
    store: ProfileStore, forwarded_first: bool
) -> None:
    """A -> B, then B -> A: A holds everything, so A's late events from before the first
    merge stay with A (also one forwarded to B before B -> A), and B's go to A."""
    shop = Shop(store)
    await shop.events(login("x1", "A", T1 - 500), login("y1", "B", T1 - 400))
    await shop.merge("A", "B", T1)
    if forwarded_first:
        await shop.events(login("x2", "A", T1 - 200))
        assert [key for key, _ in shop.sent] == ["B"]
    await shop.merge("B", "A", T2)
    if not forwarded_first:
        await shop.events(login("x2", "A", T1 - 200))
    await shop.events(login("y2", "B", T1 - 100))
    rounds = await shop.settle()
    assert sum(r.outcomes["suppressed"] for r in rounds) == 0
    assert events_of(await shop.profiles("A", "B")) == [4, 0]


async def test_a_visitor_merged_twice_sends_each_late_event_where_its_time_went(
    store: ProfileStore,
) -> None:
    """v -> a at T1, v rebuilt from newer events, v -> c at T2: v's events older than T1
    are in a's profile, those between T1 and T2 in c's; a late event goes by its time."""
    shop = Shop(store)
    await shop.events(login("v1", "v", T1 - 500), login("a1", "a", T1 - 400))
    await shop.merge("v", "a", T1)
    await shop.events(login("v2", "v", T1 + 100), login("c1", "c", T1 + 200))
    await shop.merge("v", "c", T2)
    await shop.events(login("v3", "v", T1 - 100), login("v4", "v", T1 + 300))
    assert sorted(key for key, _ in shop.sent) == ["a", "c"]
    rounds = await shop.settle()
    assert sum(r.outcomes["applied"] for r in rounds) == 2
    assert events_of(await shop.profiles("v", "a", "c")) == [0, 3, 3]


async def test_labels_of_a_visitor_merged_twice_find_the_features_where_their_time_went(
    store: ProfileStore,
) -> None:
    """v -> a at T1, v rebuilt, v -> c at T2: the features of v's events scored before T1
    moved to a, also those of a late event forwarded there, and the ones scored between
    T1 and T2 moved to c. A label under v finds each where its event went."""
    models = ProfileModels()
    shop = Shop(store, stages=Stages(models=models))
    await shop.events(login("v1", "v", T1 - 500), login("a1", "a", T1 - 400))
    await shop.merge("v", "a", T1)
    await shop.events(login("v2", "v", T1 + 100), login("c1", "c", T1 + 200))
    await shop.merge("v", "c", T2)
    await shop.events(login("v3", "v", T1 - 100))  # late: forwarded to a, scored there
    await shop.settle()
    assert None not in await store.load_scored([("a", "v1"), ("c", "v2"), ("a", "v3")])
    labels = [
        {"event_id": event_id, "user_id": "v", "label": 1, "ts": NOW}
        for event_id in ("v1", "v2", "v3", "never-scored")
    ]
    records = [Record("fraud-labels", 0, i, b"v", orjson.dumps(b)) for i, b in enumerate(labels)]
    result = await apply_labels(records, store, models, NOW)
    assert result.outcomes == {"learnt": 3, "unknown": 1}


async def test_a_visitor_merged_then_erased_keeps_the_merge_for_older_events(
    store: ProfileStore,
) -> None:
    """v -> a at T1, v rebuilt, v erased at T2: what the merge took is a's, what came
    after it went with the erase."""
    shop = Shop(store)
    await shop.events(login("v1", "v", T1 - 500), login("a1", "a", T1 - 400))
    await shop.merge("v", "a", T1)
    await shop.events(login("v2", "v", T1 + 100))
    await shop.erase("v", T2)
    late = await shop.events(login("v3", "v", T1 - 100), login("v4", "v", T1 + 300))
    assert [key for key, _ in shop.sent] == ["a"] and late.outcomes["suppressed"] == 1
    await shop.settle()
    assert events_of(await shop.profiles("v", "a")) == [0, 3]


async def test_a_late_event_reaches_an_account_erased_before_the_merge(
    store: ProfileStore,
) -> None:
    """b was erased, then rebuilt, then v merged into it: v's events from before b's
    erase are v's, in b's profile now, not b's erased past."""
    shop = Shop(store)
    await shop.events(login("v1", "v", T1 - 5_000))
    await shop.erase("b", T1 - 3_000)
    await shop.events(login("b1", "b", T1 - 1_000))
    await shop.merge("v", "b", T1)
    await shop.events(login("v2", "v", T1 - 4_000))
    rounds = await shop.settle()
    assert sum(r.outcomes["applied"] for r in rounds) == 1
    assert events_of(await shop.profiles("v", "b")) == [0, 3]


async def test_a_late_event_of_a_visitor_whose_account_was_erased_since_is_suppressed(
    store: ProfileStore,
) -> None:
    """v -> a, then a erased (GDPR), then a -> ... nothing: v's data went with a."""
    shop = Shop(store)
    await shop.events(login("v1", "v", T1 - 500), login("a1", "a", T1 - 400))
    await shop.merge("v", "a", T1)
    await shop.erase("a", T2)
    late = await shop.events(login("v2", "v", T1 - 100))
    rounds = await shop.settle()
    assert sum(r.outcomes["suppressed"] for r in [late, *rounds]) == 1
    assert sum(r.outcomes["applied"] for r in rounds) == 0
    assert events_of(await shop.profiles("v", "a")) == [0, 0]


async def test_a_merge_chain_past_the_hop_bound_is_dead_lettered(store: ProfileStore) -> None:
    """u0 -> u1 -> ... -> u10, each later than the one before: a late event of u0 is not
    followed past the bound, nor dropped: it goes to the DLQ, saying why."""
    shop = Shop(store)
    await shop.events(login("e0", "u0", T1 - 500))
    for i in range(10):
        await shop.merge(f"u{i}", f"u{i + 1}", T1 + i)
    late = await shop.events(login("e1", "u0", T1 - 100))
    assert not late.forwarded and late.outcomes["applied"] == 0
    ((key, body),) = late.dead_letters
    letter = orjson.loads(body)
    assert key == b"u0" and letter["error"] == "internal_error"
    assert "through more than 8 merges" in letter["detail"]
    assert orjson.loads(letter["value"])["event_id"] == "e1"


async def test_an_event_older_than_every_erasure_kept_is_dead_lettered_saying_so(
    store: ProfileStore,
) -> None:
    """v merged away 10 times: its marker keeps the last 9 merges, and an event older than
    all of them may have gone with an earlier one. Dead-lettered, not for the hop bound:
    each merge here is one hop from v."""
    shop = Shop(store)
    await shop.events(login("e0", "v", T1 - 500))
    for i in range(10):
        await shop.merge("v", f"a{i}", T1 + i)
    late = await shop.events(login("e1", "v", T1 - 100))
    assert not late.forwarded and late.outcomes["applied"] == 0
    ((key, body),) = late.dead_letters
    letter = orjson.loads(body)
    assert key == b"v" and letter["error"] == "internal_error"
    assert "merges" not in letter["detail"]
    assert "older than every erasure that the marker of 'v'" in letter["detail"]
    assert orjson.loads(letter["value"])["event_id"] == "e1"
    kept = await shop.events(login("e2", "v", T1 + 1))  # the oldest merge kept took it
    assert [key for key, _ in kept.forwarded] == ["a2"]


async def test_a_dead_letter_past_the_hop_bound_is_sent_again_by_a_replay(
    store: ProfileStore,
) -> None:
    """The late event's batch also rebuilds u0 from a newer event: that write moves u0's
    watermark past the late one. A crash before the dead letter's ack replays the batch,
    which finds both below the watermark: the dead letter must go out again."""
    shop = Shop(store)
    await shop.events(login("e0", "u0", T1 - 500))
    for i in range(10):
        await shop.merge(f"u{i}", f"u{i + 1}", T1 + i)
    bodies = [login("e1", "u0", T1 - 100), login("e2", "u0", T1 + 100)]
    batch = [Record(EVENTS, 0, 100 + i, b"u0", orjson.dumps(b)) for i, b in enumerate(bodies)]
    first = await shop._fold(batch)
    assert first.outcomes["applied"] == 1 and first.errors == {"internal_error": 1}
    replay = await shop._fold(batch)  # the crash came before the dead letter was acked
    assert replay.outcomes["replayed"] == 2
    assert replay.dead_letters == first.dead_letters
    again = await shop._fold([Record(EVENTS, 0, 102, b"u0", orjson.dumps(login("e3", "u0", NOW)))])
    assert again.outcomes["applied"] == 1 and not again.dead_letters  # sent, not kept for ever
    assert events_of(await shop.profiles("u0")) == [2]


async def test_a_chain_within_the_hop_bound_is_followed(store: ProfileStore) -> None:
    shop = Shop(store)
    await shop.events(login("e0", "u0", T1 - 500))
    for i in range(8):
        await shop.merge(f"u{i}", f"u{i + 1}", T1 + i)
    late = await shop.events(login("e1", "u0", T1 - 100))
    assert [key for key, _ in late.forwarded] == ["u8"]
    await shop.settle()
    assert events_of(await shop.profiles("u8")) == [2]


async def test_a_merge_replayed_after_its_mark_left_the_window_merges_once(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the merged write, before the profile aside was dropped; then more
    events of the account than its dedupe window holds; then the merge read again."""
    shop = Shop(store, ProfileParams(dedupe_window=4))
    await shop.events(*(login(f"v{i}", "v", T1 - 900 + i) for i in range(3)))
    await shop.events(login("a1", "a", T1 - 800))

    async def crash(user_id: str) -> None:
        raise ConnectionError(f"gone before dropping {user_id}")

    with monkeypatch.context() as patched:
        patched.setattr(store, "drop_aside", crash)
        with pytest.raises(ConnectionError):
            await shop.merge("v", "a", T1)
    await shop.events(*(login(f"a{i}", "a", T1 + i) for i in range(2, 12)))
    (account,) = await shop.profiles("a")
    assert account.events == 14
    replay = await shop.merge("v", "a", T1)
    assert replay.commands == {("merge", "repeated"): 1}
    (account,) = await shop.profiles("a")
    assert account.events == 14


async def test_commands_stamped_0_still_erase_and_merge(store: ProfileStore) -> None:
    shop = Shop(store)
    await shop.events(login("v1", "v", T1 - 500), login("a1", "a", T1 - 400))
    await shop.events(login("e1", "e", T1 - 300))
    erased = await shop.erase("e", 0)
    assert (erased.commands, erased.erased) == ({("erase", "erased"): 1}, ["e"])
    merged = await shop.merge("v", "a", 0)
    assert merged.commands == {("merge", "merged"): 1}
    assert events_of(await shop.profiles("e", "v", "a")) == [0, 0, 2]
    again = await shop.merge("v", "a", 0)  # a replay
    assert again.commands == {("merge", "repeated"): 1}
    assert events_of(await shop.profiles("a")) == [2]
