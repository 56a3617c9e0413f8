"""`profile-commands`: the decoder against the schema; erase and merge through the engine."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pytest

from profiling import commands as commands_module
from profiling.behaviour import Behaviour
from profiling.commands import Erase, Merge, apply_commands, decode_command
from profiling.embedding_cache import EmbeddingLRU
from profiling.encoder import HashingEncoder
from profiling.events import Rejection
from profiling.interests import InterestModel
from profiling.merging import merge_profiles
from profiling.messages import change_message
from profiling.models import ProfileModels
from profiling.pipeline import BatchResult, Record, Stages, apply_batch
from profiling.profile import Profile, ProfileParams
from profiling.store import InMemoryProfileStore, Write
from profiling.vectors import VectorParams, decode_vector
from tests.schemas import load_schema, schema_accepts, validator

NOW = 1_750_000_000_000
ERASED_AT = NOW - 3_600_000
PARAMS = ProfileParams()
NO_STAGES = Stages()
COMMANDS = "profile-commands"
EVENTS = "behavior-events"


def command(body: Any, key: bytes | None = b"u", *, offset: int = 0, ts: int = ERASED_AT) -> Record:
    value = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    return Record(COMMANDS, 0, offset, key, value, ts)


async def run_commands(
    store: InMemoryProfileStore, *records: Record, stages: Stages = NO_STAGES
) -> BatchResult:
    return await apply_commands(records, store, NOW, PARAMS, stages)


def event(event_id: str, ts: int, offset: int, user: str = "u") -> Record:
    body = {"event_id": event_id, "user_id": user, "type": "login", "ts": ts}
    return Record(EVENTS, 0, offset, user.encode(), orjson.dumps(body))


# (body, the decoder's error code or None); the schema must agree on every one.
CASES: list[tuple[bytes, str | None]] = [
    (b'{"command":"erase","user_id":"u"}', None),
    (b'{"command":"erase","user_id":"u","reason":"GDPR art. 17"}', None),  # extras ignored
    (b'{"command":"merge","from_user_id":"anon-1","user_id":"u"}', None),
    (b'{"command":"erase"}', "invalid_command"),
    (b'{"command":"erase","user_id":""}', "invalid_command"),
    (b'{"command":"erase","user_id":"' + b"x" * 129 + b'"}', "invalid_command"),
    (b'{"command":"erase","user_id":7}', "invalid_command"),
    (b'{"command":"merge","user_id":"u"}', "invalid_command"),
    (b'{"command":"delete","user_id":"u"}', "invalid_command"),
    (b'{"user_id":"u"}', "invalid_command"),
    (b'["erase","u"]', "invalid_command"),
    (b'{"command":"erase","user_id":"u"', "invalid_json"),
]


@pytest.mark.parametrize(("raw", "error"), CASES)
def test_decoder_and_schema_agree(raw: bytes, error: str | None) -> None:
    verdict = decode_command(raw)
    if error is None:
        assert isinstance(verdict, Erase | Merge)
    else:
        assert isinstance(verdict, Rejection) and verdict.error == error
    assert schema_accepts("profile_command.v1", raw) == (error is None)


def test_a_merge_into_itself_passes_the_schema_whose_comment_says_the_worker_refuses_it() -> None:
    raw = b'{"command":"merge","from_user_id":"u","user_id":"u"}'
    assert schema_accepts("profile_command.v1", raw)  # JSON Schema cannot compare two fields
    done = asyncio.run(run_commands(InMemoryProfileStore(), command(raw)))
    assert done.errors == {"invalid_command": 1}
    comment = load_schema("profile_command.v1")["$comment"]
    assert "`from_user_id` equal to `user_id`" in comment and "`invalid_command`" in comment


def test_erase_removes_the_profile_and_suppresses_older_events() -> None:
    store = InMemoryProfileStore()
    params = ProfileParams()

    async def scenario() -> None:
        before = await apply_batch([event("e1", ERASED_AT - 10, 0)], store, params, lambda: NOW)
        assert before.outcomes["applied"] == 1

        done = await run_commands(store, command({"command": "erase", "user_id": "u"}))
        assert done.erased == ["u"] and done.commands == {("erase", "erased"): 1}
        assert await store.read_profile("u") is None

        late = [event("e0", ERASED_AT - 1, 1), event("e2", ERASED_AT, 2), event("e3", NOW, 3)]
        after = await apply_batch(late, store, params, lambda: NOW)
        assert after.outcomes["suppressed"] == 1
        assert after.outcomes["applied"] == 2
        profile = (await store.load(["u"]))["u"]
        assert (profile.version, profile.events, profile.first_seen) == (1, 2, ERASED_AT)
        assert profile.erased_before == ERASED_AT

        # The command again (a replay): nothing is touched; the tombstone is sent again,
        # then the profile built since, which a reader would otherwise drop for good.
        again = await run_commands(store, command({"command": "erase", "user_id": "u"}))
        assert again.erased == ["u"] and again.commands == {("erase", "repeated"): 1}
        assert [orjson.loads(body)["version"] for _, body in again.changes] == [1]
        assert (await store.load(["u"]))["u"] == profile

        older = await apply_batch([event("e4", ERASED_AT - 5, 4)], store, params, lambda: NOW)
        assert older.outcomes["suppressed"] == 1 and not older.changes

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (command(b"not json"), "invalid_json"),
        (command(None), "invalid_json"),
        (command({"command": "erase", "user_id": "u"}, key=b"v"), "key_mismatch"),
        (command({"command": "erase", "user_id": "u"}, key=None), "key_mismatch"),
        (command({"command": "forget", "user_id": "u"}), "invalid_command"),
        (command({"command": "merge", "from_user_id": "a", "user_id": "v"}), "key_mismatch"),
        (command({"command": "merge", "from_user_id": "u", "user_id": "u"}), "invalid_command"),
    ],
)
def test_a_bad_command_is_a_dead_letter_and_touches_nothing(record: Record, error: str) -> None:
    store = InMemoryProfileStore()

    async def scenario() -> None:
        await store.save([Write(Profile("u", version=1, events=1), 0)])
        done = await run_commands(store, record)
        assert done.erased == [] and done.commands == {("invalid", "dead_lettered"): 1}
        ((key, body),) = done.dead_letters
        letter = orjson.loads(body)
        validator("dead_letter.v1").validate(letter)
        assert key == record.key and letter["error"] == error
        assert (letter["topic"], letter["offset"]) == (COMMANDS, 0)
        assert await store.read_profile("u") is not None

    asyncio.run(scenario())


def test_command_dead_letters_are_counted_by_error_code() -> None:
    deep = b'{"command":"erase","user_id":"u","x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    batch = [
        command(b"not json", offset=0),
        command({"command": "forget", "user_id": "u"}, offset=1),
        command({"command": "erase", "user_id": "u"}, key=b"v", offset=2),
        command(deep, offset=3),  # once a RecursionError out of the decoder
        command({"command": "erase", "user_id": "u"}, offset=4),
    ]
    done = asyncio.run(run_commands(InMemoryProfileStore(), *batch))
    assert done.errors == {
        "invalid_json": 1,
        "invalid_command": 1,
        "key_mismatch": 1,
        "too_deep": 1,
    }
    assert sum(done.errors.values()) == len(done.dead_letters)
    assert done.erased == ["u"]  # the one valid command


def _replayed_untimed(body: dict[str, str], store: InMemoryProfileStore) -> list[BatchResult]:
    """`body` on a record without a timestamp (-1), carried out, then the user `u`
    rebuilt from a newer event, then the same record replayed on a later clock."""
    untimed = command(body, body["user_id"].encode(), ts=-1)
    first = asyncio.run(apply_commands([untimed], store, NOW, PARAMS, NO_STAGES))
    asyncio.run(apply_batch([event("u-new", NOW + 500, 7)], store, PARAMS, lambda: NOW + 500))
    replay = asyncio.run(apply_commands([untimed], store, NOW + 1_000, PARAMS, NO_STAGES))
    return [first, replay]


ERASE_U = {"command": "erase", "user_id": "u"}
MERGE_U_INTO_A = {"command": "merge", "from_user_id": "u", "user_id": "a"}


@pytest.mark.parametrize("body", [ERASE_U, MERGE_U_INTO_A], ids=["erase", "merge"])
def test_a_command_without_a_timestamp_is_refused_on_every_replay(body: dict[str, str]) -> None:
    """No time of its own: the worker's clock would differ on a replay, which would then
    erase (or merge) the profile rebuilt since from newer events."""
    store = InMemoryProfileStore()
    asyncio.run(apply_batch([event("u-old", ERASED_AT - 10, 1)], store, PARAMS, lambda: NOW))
    asyncio.run(apply_batch([event("a-old", ERASED_AT - 10, 2, "a")], store, PARAMS, lambda: NOW))
    results = _replayed_untimed(body, store)
    profiles = asyncio.run(store.load(["u", "a"]))
    assert profiles["u"].events == 2 and profiles["u"].erased_before == 0  # the replay too
    assert profiles["a"].events == 1
    for done in results:
        assert done.commands == {("invalid", "dead_lettered"): 1}
        assert done.errors == {"invalid_command": 1} and not done.erased
        (letter,) = (orjson.loads(body) for _, body in done.dead_letters)
        assert "no timestamp" in letter["detail"]


def test_a_record_stamped_zero_still_erases() -> None:
    store = InMemoryProfileStore()
    done = asyncio.run(run_commands(store, command({"command": "erase", "user_id": "u"}, ts=0)))
    assert done.commands == {("erase", "absent"): 1}
    assert asyncio.run(store.load(["u"]))["u"].erased_before == 1


# --- merge ---------------------------------------------------------------------------------

TEXTS = ("trail running shoes", "steel kettle", "camping tent", "red sneakers", "phone case")
KINDS = ("view", "click", "search", "add_to_cart", "purchase", "login", "review")


def shop_log(user: str, n: int, seed: int, first_offset: int, days_ago: int = 0) -> list[Record]:
    """A user's mixed events over two days until `days_ago` (purchases, logins, texts)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        kind = str(rng.choice(KINDS))
        text = TEXTS[int(rng.integers(0, len(TEXTS)))]
        body: dict[str, Any] = {
            "event_id": f"{user}-{i}",
            "user_id": user,
            "type": kind,
            "ts": NOW - days_ago * 86_400_000 - int(rng.integers(0, 2 * 86_400_000)),
            "device_id": f"device-{int(rng.integers(0, 3))}-{user}",
            "category": str(rng.choice(["shoes", "kitchen", "outdoor"])),
        }
        if kind == "search":
            body["query"] = text
        elif kind == "purchase":
            body |= {"amount": float(rng.integers(5, 500)), "card_fp": f"card-{user}"}
        elif kind == "login":
            body["success"] = bool(rng.random() < 0.8)
        elif kind == "review":
            body |= {"item_id": text, "text": f"{text} is fine", "rating": 4}
        else:
            body |= {"item_id": text, "title": text, "price": 19.5}
        records.append(Record("events", 0, first_offset + i, user.encode(), orjson.dumps(body)))
    return records


def as_user(records: list[Record], user: str) -> list[Record]:
    """The same events, as if `user` had made every one of them."""
    renamed = []
    for record in records:
        body = orjson.loads(record.value or b"") | {"user_id": user}
        renamed.append(Record("events", 0, record.offset, user.encode(), orjson.dumps(body)))
    return renamed


def engine() -> Stages:
    encoder = HashingEncoder(dim=16)
    return Stages(InterestModel(encoder, EmbeddingLRU()), models=ProfileModels(dim=16))


@pytest.mark.parametrize("older", ["anon", "k"])
def test_a_merged_profile_is_the_profile_of_both_users_events(older: str) -> None:
    """Merged from two users' profiles, or built from all their events as one user's:
    the same aggregates, category affinity, vectors and behaviour state. Either the
    visitor browsed days before the account's own events, or a returning customer's
    account is the older one."""
    anon = shop_log("anon", 40, 1, 0, days_ago=3 if older == "anon" else 0)
    known = shop_log("k", 30, 2, 100, days_ago=3 if older == "k" else 0)

    async def scenario() -> tuple[Profile, Profile, BatchResult]:
        stages, merged_store = engine(), InMemoryProfileStore()
        await apply_batch(anon + known, merged_store, PARAMS, lambda: NOW, stages)
        merge = command({"command": "merge", "from_user_id": "anon", "user_id": "k"}, key=b"k")
        done = await run_commands(merged_store, merge, stages=stages)
        oracle_store = InMemoryProfileStore()
        await apply_batch(as_user(anon + known, "k"), oracle_store, PARAMS, lambda: NOW, engine())
        merged = (await merged_store.load(["k"]))["k"]
        return merged, (await oracle_store.load(["k"]))["k"], done

    merged, oracle, done = asyncio.run(scenario())
    assert done.commands == {("merge", "merged"): 1} and done.erased == ["anon"]
    assert (merged.events, merged.counts, merged.orders) == (70, oracle.counts, oracle.orders)
    assert merged.events == oracle.events
    assert math.isclose(merged.spend, oracle.spend, abs_tol=1e-6)
    assert (merged.first_seen, merged.last_seen) == (oracle.first_seen, oracle.last_seen)
    assert merged.category_scores.keys() == oracle.category_scores.keys()
    for name, score in oracle.category_scores.items():
        assert math.isclose(merged.category_scores[name], score, rel_tol=1e-9)
    assert merged.interest is not None and oracle.interest is not None
    for mine, theirs in (
        (merged.interest.vec_long, oracle.interest.vec_long),
        (merged.interest.vec_short, oracle.interest.vec_short),
    ):
        assert mine is not None and theirs is not None
        np.testing.assert_allclose(decode_vector(mine), decode_vector(theirs), atol=1e-5)
    for mine_norm, their_norm in (
        (merged.interest.log2_long, oracle.interest.log2_long),
        (merged.interest.log2_short, oracle.interest.log2_short),
    ):
        assert mine_norm is not None and their_norm is not None
        assert math.isclose(mine_norm, their_norm, abs_tol=1e-6)
    mine, theirs = merged.behaviour, oracle.behaviour
    assert mine is not None and theirs is not None
    assert (mine.events, mine.orders, mine.failures) == (
        theirs.events,
        theirs.orders,
        theirs.failures,
    )
    assert (mine.first_ts, mine.last_ts, mine.last_login, mine.last_cart) == (
        theirs.first_ts,
        theirs.last_ts,
        theirs.last_login,
        theirs.last_cart,
    )
    assert (mine.amount_n, mine.price_n) == (theirs.amount_n, theirs.price_n)
    assert math.isclose(mine.amount_mean, theirs.amount_mean, rel_tol=1e-9)
    assert math.isclose(mine.amount_m2, theirs.amount_m2, rel_tol=1e-9)
    assert math.isclose(mine.price_sum, theirs.price_sum, rel_tol=1e-9)
    for field in ("devices", "countries", "cards"):
        assert {v: first for v, first, _ in getattr(mine, field)} == {
            v: first for v, first, _ in getattr(theirs, field)
        }, field


def test_merge_publishes_the_known_user_whole_and_erases_the_other() -> None:
    store = InMemoryProfileStore()

    async def scenario() -> None:
        await apply_batch(shop_log("anon", 10, 3, 0), store, PARAMS, lambda: NOW, NO_STAGES)
        merge = command({"command": "merge", "from_user_id": "anon", "user_id": "k"}, key=b"k")
        done = await run_commands(store, merge)
        assert done.commands == {("merge", "merged"): 1}
        assert done.erased == ["anon"] and await store.read_profile("anon") is None
        ((user, body),) = done.changes
        message = orjson.loads(body)
        validator("profile_update.v1").validate(message)
        assert user == "k" and message["version"] == 1 and message["events"] == 10
        assert {"events", "count:view", "categories", "spend"} <= set(message["changed"])
        # Replayed, whole: nothing merged again (the profile aside was dropped); the
        # account's change is published again (the replay may follow a crash before it).
        again = await run_commands(store, merge)
        assert again.commands == {("merge", "repeated"): 1}
        assert [orjson.loads(b)["version"] for _, b in again.changes] == [1]
        assert (await store.load(["k"]))["k"].events == 10
        # Merging a user with no profile: only the erase.
        nobody = command({"command": "merge", "from_user_id": "ghost", "user_id": "k"}, key=b"k")
        assert (await run_commands(store, nobody)).commands == {("merge", "absent"): 1}

    asyncio.run(scenario())


def test_a_merge_message_reports_the_segment_against_the_accounts_last_message() -> None:
    """`prev_segment` is the segment of the user's previous message, and `segment` is
    listed as changed only when it differs from it: an account keeps its own segment,
    and takes the visitor's only when it had none (a move, or a new user)."""
    stages = Stages(models=ProfileModels())

    async def scenario() -> None:
        store = InMemoryProfileStore()
        login = {"event_id": "k1", "user_id": "k", "type": "login", "ts": NOW - 9_000}
        first = await apply_batch(
            [Record(EVENTS, 0, 0, b"k", orjson.dumps(login))], store, PARAMS, lambda: NOW, stages
        )
        ((_, body),) = first.changes
        last = orjson.loads(body)
        await apply_batch(shop_log("anon", 10, 3, 1), store, PARAMS, lambda: NOW, stages)
        merge = command({"command": "merge", "from_user_id": "anon", "user_id": "k"}, key=b"k")
        ((_, body),) = (await run_commands(store, merge, stages=stages)).changes
        message = orjson.loads(body)
        validator("profile_update.v1").validate(message)
        assert message["segment"] == message["prev_segment"] == last["segment"] is not None
        assert "segment" not in message["changed"] and "events" in message["changed"]

    asyncio.run(scenario())
    visitor = Profile("anon", version=4, segment=3, prev_segment=1, segment_dwell=2)
    for account in (Profile("k"), Profile("k", version=2, published_version=2)):
        merged = merge_profiles(
            account, visitor, b"m" * 8, params=PARAMS, vectors=VectorParams(), now_ms=NOW
        )
        message = orjson.loads(change_message(merged, merged.unpublished))
        assert (message["segment"], message["prev_segment"]) == (3, None)
        assert "segment" in message["changed"]


@pytest.mark.parametrize(
    ("account_scored", "visitor_scored", "kept"),
    [
        (NOW - 9_000, NOW - 1_000, "visitor"),  # the visitor's login came after
        (NOW - 1_000, NOW - 9_000, "account"),
        (NOW - 5_000, NOW - 5_000, "account"),
        (0, NOW - 1_000, "account"),  # a state written before `last_scored`: not known
        (NOW - 9_000, 0, "account"),
    ],
)
def test_a_merge_keeps_the_risk_of_the_newer_scored_event(
    account_scored: int, visitor_scored: int, kept: str
) -> None:
    """The merged risk is the latest, as both users' events applied as one would leave
    it: the visitor's where their scored event is the newer, else the account's."""
    risks = {"account": (0.2, "[]"), "visitor": (0.9, '[{"feature":"new_device"}]')}

    def rated(user: str, who: str, last_scored: int) -> Profile:
        risk, reasons = risks[who]
        behaviour = Behaviour(last_scored=last_scored)
        return Profile(user, version=2, risk=risk, risk_reasons=reasons, behaviour=behaviour)

    account = rated("k", "account", account_scored)
    visitor = rated("anon", "visitor", visitor_scored)
    merged = merge_profiles(
        account, visitor, b"m" * 8, params=PARAMS, vectors=VectorParams(), now_ms=NOW
    )
    assert (merged.risk, merged.risk_reasons) == risks[kept]
    assert merged.behaviour is not None
    assert merged.behaviour.last_scored == max(account_scored, visitor_scored)


def test_a_visitors_events_older_than_the_merge_are_forwarded_to_the_account() -> None:
    """Kafka orders nothing across topics: the merge may be read before the visitor's
    last events. They are sent on to the account, once, and counted once there."""
    store = InMemoryProfileStore()

    async def fold(*records: Record) -> BatchResult:
        return await apply_batch(records, store, PARAMS, lambda: NOW, NO_STAGES)

    async def scenario() -> None:
        await fold(event("a1", ERASED_AT - 30, 0, "anon"), event("a2", ERASED_AT - 20, 1, "anon"))
        await fold(event("k1", ERASED_AT - 25, 0, "k"))
        merge = command({"command": "merge", "from_user_id": "anon", "user_id": "k"}, key=b"k")
        assert (await run_commands(store, merge)).commands == {("merge", "merged"): 1}

        # a2 read again at its offset (a replay): the marker keeps the visitor's watermark.
        replayed = await fold(event("a2", ERASED_AT - 20, 1, "anon"))
        assert replayed.outcomes["replayed"] == 1 and not replayed.forwarded
        # a2 again (the producer sent it twice), a3 late, a4 after the merge: a new
        # visitor profile.
        after_merge = (
            event("a2", ERASED_AT - 20, 4, "anon"),
            event("a3", ERASED_AT - 10, 2, "anon"),
            event("a4", ERASED_AT + 10, 3, "anon"),
        )
        late = await fold(*after_merge)
        assert (late.outcomes["forwarded"], late.outcomes["applied"]) == (2, 1)
        assert [key for key, _ in late.forwarded] == ["k", "k"]
        bodies = [orjson.loads(body) for _, body in late.forwarded]
        assert [(b["event_id"], b["user_id"], b["forwarded_from"]) for b in bodies] == [
            ("a2", "k", "anon"),
            ("a3", "k", "anon"),
        ]
        assert all(schema_accepts("behavior_event.v1", body) for _, body in late.forwarded)
        visitor = (await store.load(["anon"]))["anon"]
        assert (visitor.events, visitor.erased_before, visitor.merged_into) == (1, ERASED_AT, "k")
        # A crash after that write, before the forwarded records' acks: the replay finds
        # them below the watermark and sends them again.
        replay = await fold(*after_merge)
        assert replay.outcomes["replayed"] == 3 and replay.forwarded == late.forwarded
        # Two writes replayed at once (the second landed while the first's acks were
        # pending): the first's forwarded events go out again too.
        later = await fold(
            event("a6", ERASED_AT - 8, 20, "anon"), event("a7", ERASED_AT + 20, 21, "anon")
        )
        assert [orjson.loads(b)["event_id"] for _, b in later.forwarded] == ["a6"]
        both = await fold(*after_merge, event("a6", ERASED_AT - 8, 20, "anon"),
                          event("a7", ERASED_AT + 20, 21, "anon"))  # fmt: skip
        assert sorted(orjson.loads(b)["event_id"] for _, b in both.forwarded) == ["a2", "a3", "a6"]

        # On the events topic, keyed by the account: a3 is new there, a2 merged already.
        sent = [Record(EVENTS, 0, 10 + i, key.encode(), body) for i, (key, body) in
                enumerate(late.forwarded)]  # fmt: skip
        landed = await fold(*sent)
        assert (landed.outcomes["applied"], landed.outcomes["duplicate"]) == (1, 1)
        account = (await store.load(["k"]))["k"]
        assert (account.events, account.counts) == (4, {"login": 4})
        # Delivered again: a duplicate; the account's own older events are its own.
        again = await fold(*(replace(r, offset=r.offset + 2) for r in sent))
        assert again.outcomes["duplicate"] == 2 and not again.forwarded

        # The rebuilt visitor still forwards; an event forwarded from a user who was never
        # merged (k) follows no merge: older than anon's erasure, it is suppressed.
        bounced = orjson.dumps({"event_id": "x1", "user_id": "anon", "type": "login",
                                "ts": ERASED_AT - 5, "forwarded_from": "k"})  # fmt: skip
        older = await fold(
            event("a5", ERASED_AT - 5, 30, "anon"), Record(EVENTS, 0, 31, b"anon", bounced)
        )
        assert [orjson.loads(b)["event_id"] for _, b in older.forwarded] == ["a5"]
        assert older.outcomes["suppressed"] == 1

    asyncio.run(scenario())


def test_a_forwarded_event_kept_in_the_visitors_state_holds_no_raw_ip() -> None:
    """A write that forwards keeps the bodies in the profile's state until their acks
    (`fwd`); an IP is never stored raw (DESIGN.md §3)."""
    store = InMemoryProfileStore()

    async def scenario() -> None:
        await apply_batch([event("a1", ERASED_AT - 30, 0, "anon")], store, PARAMS, lambda: NOW)
        merge = command({"command": "merge", "from_user_id": "anon", "user_id": "k"}, key=b"k")
        await run_commands(store, merge)
        body = {"event_id": "a2", "user_id": "anon", "type": "login", "ts": ERASED_AT - 10,
                "ip": "203.0.113.7", "device_id": "d-1"}  # fmt: skip
        batch = [Record(EVENTS, 0, 1, b"anon", orjson.dumps(body)),
                 event("a3", ERASED_AT + 10, 2, "anon")]  # fmt: skip
        late = await apply_batch(batch, store, PARAMS, lambda: NOW)
        ((key, sent),) = late.forwarded
        assert key == "k" and orjson.loads(sent)["device_id"] == "d-1"
        assert "ip" not in orjson.loads(sent)
        assert b"203.0.113.7" not in store._states["anon"]

    asyncio.run(scenario())


@pytest.mark.parametrize("again", ["replayed", "resent"])
def test_a_visitors_event_after_the_merge_time_merged_with_them_counts_once(again: str) -> None:
    """The visitor's checkout has a time just after the merge's and was folded before
    the merge was read: the account holds it. Read again (the batch replayed after a
    crash, or the producer's re-send), it is no new event of a new visitor."""
    store = InMemoryProfileStore()

    def purchase(event_id: str, ts: int, offset: int) -> Record:
        body = {"event_id": event_id, "user_id": "anon", "type": "purchase", "ts": ts,
                "amount": 40.0}  # fmt: skip
        return Record(EVENTS, 3, offset, b"anon", orjson.dumps(body))

    async def scenario() -> None:
        batch = [purchase("v1", ERASED_AT - 5_000, 0), purchase("v2", ERASED_AT + 300, 1)]
        await apply_batch(batch, store, PARAMS, lambda: NOW, NO_STAGES)
        merge = command({"command": "merge", "from_user_id": "anon", "user_id": "k"}, key=b"k")
        assert (await run_commands(store, merge)).commands == {("merge", "merged"): 1}
        records = batch if again == "replayed" else [purchase("v2", ERASED_AT + 300, 7)]
        late = await apply_batch(records, store, PARAMS, lambda: NOW, NO_STAGES)
        assert late.outcomes["applied"] == 0 and not late.forwarded and not late.changes
        account, visitor = (await store.load(["k", "anon"])).values()
        assert (account.orders, account.spend) == (2, 80.0)
        assert visitor.is_new and visitor.merged_into == "k"  # no profile since its tombstone

    asyncio.run(scenario())


def test_a_merge_keeps_the_accounts_recent_ids_beside_a_full_visitor_window() -> None:
    store, params = InMemoryProfileStore(), ProfileParams(dedupe_window=8)

    async def fold(*records: Record) -> BatchResult:
        return await apply_batch(records, store, params, lambda: NOW, NO_STAGES)

    async def scenario() -> None:
        await fold(*(event(f"a{i}", ERASED_AT - 100 + i, i, "anon") for i in range(20)))
        await fold(*(event(f"k{i}", ERASED_AT - 50 + i, 20 + i, "k") for i in range(3)))
        merge = command({"command": "merge", "from_user_id": "anon", "user_id": "k"}, key=b"k")
        await apply_commands([merge], store, NOW, params, NO_STAGES)
        # Re-sent by the producer: the account's own last events and the visitor's.
        resent = [event(f"k{i}", ERASED_AT - 50 + i, 30 + i, "k") for i in range(3)]
        resent += [event("a19", ERASED_AT - 81, 40, "k")]
        again = await fold(*resent)
        assert (again.outcomes["duplicate"], again.outcomes["applied"]) == (4, 0)

    asyncio.run(scenario())


@pytest.mark.parametrize("crash", ["after_set_aside", "after_write"])
def test_a_merge_replayed_after_a_crash_merges_once(
    crash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InMemoryProfileStore()
    merge = command({"command": "merge", "from_user_id": "anon", "user_id": "k"}, key=b"k")

    async def scenario() -> None:
        await apply_batch(shop_log("anon", 10, 3, 0), store, PARAMS, lambda: NOW, NO_STAGES)
        await apply_batch(shop_log("k", 5, 4, 50), store, PARAMS, lambda: NOW, NO_STAGES)
        if crash == "after_set_aside":
            await store.set_aside("anon", ERASED_AT, "k")
        else:
            with monkeypatch.context() as patched:
                patched.setattr(store, "drop_aside", _crash)
                with pytest.raises(ConnectionError):
                    await run_commands(store, merge)
        done = await run_commands(store, merge)
        want = "merged" if crash == "after_set_aside" else "repeated"
        assert done.commands == {("merge", want): 1}
        assert [orjson.loads(body)["events"] for _, body in done.changes] == [15]
        assert (await store.load(["k"]))["k"].events == 15
        assert (await store.set_aside("anon", ERASED_AT, "k"))[1] is None  # dropped at last

    asyncio.run(scenario())


def _chain() -> tuple[InMemoryProfileStore, Record, Record]:
    """A store with visitor v and guest account a, and the commands v -> a, then a -> b."""
    store = InMemoryProfileStore()
    v_to_a = command({"command": "merge", "from_user_id": "v", "user_id": "a"}, key=b"a")
    a_to_b = command(
        {"command": "merge", "from_user_id": "a", "user_id": "b"},
        key=b"b",
        offset=1,
        ts=ERASED_AT + 1_000,
    )

    async def fill() -> None:
        await apply_batch([event("v1", ERASED_AT - 50, 0, "v")], store, PARAMS, lambda: NOW)
        await apply_batch([event("a1", ERASED_AT - 40, 1, "a")], store, PARAMS, lambda: NOW)

    asyncio.run(fill())
    return store, v_to_a, a_to_b


def published(result: BatchResult) -> list[tuple[str, int | None]]:
    """(user, version; None for a tombstone) in the worker's order: tombstones first."""
    return [(user, None) for user in result.erased] + [
        (user, orjson.loads(body)["version"]) for user, body in result.changes
    ]


def test_a_merge_replayed_after_its_account_merged_on_publishes_no_empty_account() -> None:
    """v -> a read again (a crash before its commit) after a -> b: a is gone, its
    tombstone sent; a message of a's empty marker would bring a back to readers."""
    store, v_to_a, a_to_b = _chain()

    async def scenario() -> None:
        await run_commands(store, v_to_a)
        assert "a" in (await run_commands(store, a_to_b)).erased
        replay = await run_commands(store, v_to_a)
        assert replay.commands == {("merge", "repeated"): 1}
        assert [user for user, _ in replay.changes] == []

    asyncio.run(scenario())


def test_a_batch_merging_into_a_user_then_that_user_on_ends_with_the_tombstone() -> None:
    """One batch of v -> a and a -> b: a's merged profile is gone by the batch's end, so
    a's last message is its tombstone, the first time and when the batch is replayed."""
    store, v_to_a, a_to_b = _chain()

    async def scenario() -> None:
        for _ in ("first", "replay"):
            result = await run_commands(store, v_to_a, a_to_b)
            assert [version for user, version in published(result) if user == "a"][-1] is None
            assert "b" in {user for user, _ in result.changes}

    asyncio.run(scenario())


async def _crash(user_id: str) -> None:
    raise ConnectionError(f"gone before dropping {user_id}")


def test_merge_gives_up_after_losing_every_version_race(monkeypatch: pytest.MonkeyPatch) -> None:
    store = InMemoryProfileStore()

    async def always_lost(writes: list[Write]) -> list[str]:
        return [w.profile.user_id for w in writes]

    async def scenario() -> None:
        await apply_batch(shop_log("anon", 3, 3, 0), store, PARAMS, lambda: NOW, NO_STAGES)
        monkeypatch.setattr(store, "save", always_lost)
        merge = command({"command": "merge", "from_user_id": "anon", "user_id": "k"}, key=b"k")
        with pytest.raises(commands_module.StoreConflictError):
            await run_commands(store, merge)

    asyncio.run(scenario())
