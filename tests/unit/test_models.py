"""Segments, risk, alerts and delayed labels through the batch pipeline, on the in-memory store."""

from __future__ import annotations

import copy
import itertools
import math
import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import fields, replace

import numpy as np
import orjson
import pytest

from profiling.behaviour import TRANSACTION_FEATURES, Behaviour
from profiling.commands import apply_commands
from profiling.labels import apply_labels
from profiling.models import ProfileModels, alert_id
from profiling.pipeline import BatchResult, Record, Stages, apply_batch, fold_batch
from profiling.profile import Outcome, Profile, ProfileParams, evolve
from profiling.risk import (
    ANOMALY,
    CALIBRATION_MIN_SCORES,
    KEPT_FEATURES,
    RiskModel,
    explain,
    keep_features,
    kept_features,
)
from profiling.segments import SEGMENT_FEATURES, SegmentModel
from profiling.store import InMemoryProfileStore, Write
from profiling.vectors import StoredInterest
from tests.schemas import schema_accepts, validator

NOW = 1_750_000_000_000
PARAMS = ProfileParams(heartbeat_ms=0)


def records(
    bodies: list[dict[str, object]], topic: str = "events", start: int = 0, timestamp: int = -1
) -> list[Record]:
    return [
        Record(topic, 0, start + i, str(b["user_id"]).encode(), orjson.dumps(b), timestamp)
        for i, b in enumerate(bodies)
    ]


def shopper(user: str, n: int, start_ts: int, rng: random.Random) -> list[dict[str, object]]:
    """A regular customer: logs in from home, carts, buys ordinary amounts with their card."""
    out: list[dict[str, object]] = []
    ts = start_ts
    for i in range(n):
        ts += rng.randint(2, 20) * 3_600_000
        out.append(
            {
                "event_id": f"{user}-l{i}",
                "user_id": user,
                "type": "login",
                "ts": ts,
                "device_id": f"{user}-phone",
                "country": "DE",
                "success": True,
            }
        )
        out.append(
            {
                "event_id": f"{user}-c{i}",
                "user_id": user,
                "type": "add_to_cart",
                "ts": ts + 60_000,
                "item_id": "i1",
                "price": 30.0,
                "category": "books",
            }
        )
        out.append(
            {
                "event_id": f"{user}-p{i}",
                "user_id": user,
                "type": "purchase",
                "ts": ts + 600_000,
                "amount": round(rng.uniform(20, 60), 2),
                "card_fp": f"{user}-card",
                "device_id": f"{user}-phone",
                "country": "DE",
            }
        )
    return out  # fmt: skip


def takeover(user: str, ts: int) -> list[dict[str, object]]:
    """Failed logins from a new device abroad, then a large order with a new card."""
    out: list[dict[str, object]] = [
        {
            "event_id": f"{user}-x{i}",
            "user_id": user,
            "type": "login",
            "ts": ts + i * 10_000,
            "device_id": "attacker",
            "country": "RU",
            "success": False,
        }
        for i in range(5)
    ]
    out.append(
        {
            "event_id": f"{user}-xp",
            "user_id": user,
            "type": "purchase",
            "ts": ts + 90_000,
            "amount": 1900.0,
            "card_fp": "stolen",
            "device_id": "attacker",
            "country": "RU",
        }
    )
    return out  # fmt: skip


async def run(models: ProfileModels, bodies: list[dict[str, object]], store: InMemoryProfileStore):  # type: ignore[no-untyped-def]
    return await apply_batch(records(bodies), store, PARAMS, lambda: NOW, Stages(models=models))


def auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


async def test_profiles_get_segment_risk_and_reasons() -> None:
    store, models = InMemoryProfileStore(), ProfileModels()
    rng = random.Random(1)
    bodies = [b for u in range(20) for b in shopper(f"u{u}", 5, NOW - 30 * 86_400_000, rng)]
    result = await run(models, sorted(bodies, key=lambda b: b["ts"]), store)  # type: ignore[arg-type, return-value]
    stored = await store.read_profile("u3")
    assert stored is not None
    assert 0 <= int(stored["segment"]) < models.segments.n_segments
    assert 0.0 <= float(stored["risk"]) <= 1.0
    reasons = orjson.loads(stored["risk_reasons"])
    assert len(reasons) <= 3
    assert all({"feature", "contribution", "detail"} <= set(r) for r in reasons)
    change = orjson.loads(next(body for user, body in result.changes if user == "u3"))
    assert change["segment"] == int(stored["segment"]) and change["prev_segment"] is None
    assert change["risk_band"] in ("low", "medium", "high")
    assert len(result.risk_scores) == 200


async def taken_over(
    store: InMemoryProfileStore, models: ProfileModels, rng: random.Random
) -> tuple[list[Record], BatchResult]:
    """A hundred regular customers' history (1,200 scored events, past the risk model's
    warm-up), then u7's account taken over: the attack's records and what applying them gave."""
    history = [b for u in range(100) for b in shopper(f"u{u}", 6, NOW - 40 * 86_400_000, rng)]
    await run(models, sorted(history, key=lambda b: b["ts"]), store)  # type: ignore[arg-type]
    attack = records(takeover("u7", NOW - 3_600_000), start=10_000)
    return attack, await apply_batch(attack, store, PARAMS, lambda: NOW, Stages(models=models))


async def test_the_alerts_of_a_batch_replayed_after_a_merge_go_out_again() -> None:
    """A merge into the user landed while the batch that raised their alerts was still
    publishing; after a crash the batch is replayed and its alerts must go out again
    (the merge's write had dropped them)."""
    store, models = InMemoryProfileStore(), ProfileModels(alert_threshold=0.5)
    attack, first = await taken_over(store, models, random.Random(2))
    assert first.alerts
    visit = {"event_id": "a-v", "user_id": "anon-7", "type": "view", "ts": NOW, "item_id": "i2"}
    await apply_batch(records([visit], start=30_000), store, PARAMS, lambda: NOW, Stages())
    body = {"command": "merge", "from_user_id": "anon-7", "user_id": "u7"}
    merge = Record("profile-commands", 0, 0, b"u7", orjson.dumps(body), NOW)
    merged = await apply_commands([merge], store, NOW + 1, PARAMS, Stages(models=models))
    assert merged.commands == {("merge", "merged"): 1}
    again = await apply_batch(attack, store, PARAMS, lambda: NOW + 2, Stages(models=models))
    assert again.outcomes["applied"] == 0 and again.alerts == first.alerts


async def _trained(store: InMemoryProfileStore) -> ProfileModels:
    """Models that learnt 100 shoppers' last 40 days (written to `store`), alerting at 0.5."""
    models = ProfileModels(alert_threshold=0.5)
    rng = random.Random(2)
    history = [b for u in range(100) for b in shopper(f"u{u}", 6, NOW - 40 * 86_400_000, rng)]
    await run(models, sorted(history, key=lambda b: b["ts"]), store)  # type: ignore[arg-type]
    return models


MERGE_U7_INTO_U8 = Record(
    "profile-commands", 0, 0, b"u8",
    orjson.dumps({"command": "merge", "from_user_id": "u7", "user_id": "u8"}), NOW,
)  # fmt: skip


async def test_a_merged_visitors_alerts_go_out_again_under_the_visitors_key() -> None:
    """A batch wrote the visitor (alerts raised) and the account; the merge landed before
    its acks. Its replay sends the visitor's alerts again with the account's (the
    merged profile keeps both), each under its own user's key, not the account's."""
    store = InMemoryProfileStore()
    models = await _trained(store)
    view = {"event_id": "u8-v", "user_id": "u8", "type": "view", "ts": NOW, "item_id": "i2"}
    batch = records([*takeover("u7", NOW - 3_600_000), view], start=10_000)
    stages = Stages(models=models)
    first = await apply_batch(batch, store, PARAMS, lambda: NOW, stages)
    assert first.alerts and {key for key, _ in first.alerts} == {"u7"}
    merged = await apply_commands([MERGE_U7_INTO_U8], store, NOW + 1, PARAMS, stages)
    assert merged.commands == {("merge", "merged"): 1}
    replay = await apply_batch(batch, store, PARAMS, lambda: NOW + 2, stages)
    assert replay.alerts == first.alerts  # keyed u7, as their bodies say


async def test_a_visitors_alerts_go_out_with_the_merge_that_lands_before_their_acks() -> None:
    """A batch of the visitor's alone raised alerts; the merge landed before its acks.
    Its replay finds no visitor profile: their events are replays at the merge's
    marker, or older than the merge, forwarded, and duplicates at the account. So
    the merge sends those alerts itself, and again when it is replayed."""
    store = InMemoryProfileStore()
    models = await _trained(store)
    stages = Stages(models=models)
    batch = records(takeover("u7", NOW - 3_600_000), start=10_000)
    first = await apply_batch(batch, store, PARAMS, lambda: NOW, stages)
    assert first.alerts and {key for key, _ in first.alerts} == {"u7"}
    merge = MERGE_U7_INTO_U8
    merged = await apply_commands([merge], store, NOW + 1, PARAMS, stages)
    assert merged.commands == {("merge", "merged"): 1}
    assert merged.alerts == first.alerts  # keyed u7, as their bodies say
    replay = await apply_batch(batch, store, PARAMS, lambda: NOW + 2, stages)
    forwarded = [
        Record("events", 1, 50 + i, key.encode(), value)
        for i, (key, value) in enumerate(replay.forwarded)
    ]
    at_account = await apply_batch(forwarded, store, PARAMS, lambda: NOW + 3, stages)
    assert replay.outcomes["applied"] == at_account.outcomes["applied"] == 0
    assert not replay.alerts and not at_account.alerts
    again = await apply_commands([merge], store, NOW + 4, PARAMS, stages)
    assert again.commands == {("merge", "repeated"): 1}
    assert set(first.alerts) <= set(again.alerts)


async def test_a_late_event_leaves_the_risk_of_a_later_one_scored_before() -> None:
    """`risk` is of the user's latest purchase or login in event time: a takeover that
    arrives after the user's later, ordinary purchase raises its alerts, but the
    profile keeps that purchase's risk and reasons."""
    store = InMemoryProfileStore()
    models = await _trained(store)
    (before,) = (await store.load(["u7"])).values()
    late = records(takeover("u7", before.last_seen - 3_600_000), start=10_000)
    result = await apply_batch(late, store, PARAMS, lambda: NOW, Stages(models=models))
    assert result.outcomes["applied"] == len(late) and result.alerts
    (after,) = (await store.load(["u7"])).values()
    assert (after.risk, after.risk_reasons) == (before.risk, before.risk_reasons)
    assert after.behaviour is not None and after.behaviour.last_scored == before.last_seen


async def test_a_late_event_leaves_the_risk_of_a_state_stored_before_last_scored() -> None:
    """A behaviour state written before `last_scored` was kept: a late takeover then
    overwrote the risk and reasons of the user's later purchase."""
    store = InMemoryProfileStore()
    models = await _trained(store)
    (before,) = (await store.load(["u7"])).values()
    document, newline, seen = store._states["u7"].partition(b"\n")
    state = orjson.loads(document)
    # As written before `last_scored`: cut at that field, not at the end (a field added
    # after it would be what a cut of the last element takes away).
    last_scored = [field.name for field in fields(Behaviour)].index("last_scored")
    assert len(state["beh"]) > last_scored
    state["beh"] = state["beh"][:last_scored]
    store._states["u7"] = orjson.dumps(state) + newline + seen
    late = records(takeover("u7", before.last_seen - 3_600_000), start=10_000)
    result = await apply_batch(late, store, PARAMS, lambda: NOW, Stages(models=models))
    assert result.outcomes["applied"] == len(late) and result.alerts
    (after,) = (await store.load(["u7"])).values()
    assert (after.risk, after.risk_reasons) == (before.risk, before.risk_reasons)


async def test_a_customer_written_without_the_models_is_not_scored_as_a_new_account() -> None:
    """Models switched on for an existing store: a long-time customer's purchase was a
    "first order" of an account "0 days old"."""
    store, models = InMemoryProfileStore(), ProfileModels()
    history = shopper("u1", 30, NOW - 400 * 86_400_000, random.Random(6))
    await apply_batch(records(history), store, PARAMS, lambda: NOW, Stages())  # no models
    purchase = {"event_id": "u1-now", "user_id": "u1", "type": "purchase", "ts": NOW,
                "amount": 40.0, "card_fp": "u1-card", "device_id": "u1-phone"}  # fmt: skip
    later = records([purchase], start=100)
    await apply_batch(later, store, PARAMS, lambda: NOW, Stages(models=models))
    (kept,) = await store.load_scored([("u1", "u1-now")])
    assert kept is not None
    features = kept_features(kept)
    assert features["first_order"] == 0.0 and math.expm1(features["account_age_days"]) > 300
    # The usual amount is the orders' before this one: a huge order is far above it.
    (profile,) = (await store.load(["u1"])).values()
    usual = (profile.spend - 40.0) / (profile.orders - 1)
    assert features["amount_vs_usual"] == pytest.approx(math.log2(41.0 / (usual + 1.0)), abs=1e-4)


async def test_an_alert_is_raised_once_and_replayed_identically() -> None:
    store, models = InMemoryProfileStore(), ProfileModels(alert_threshold=0.5)
    rng = random.Random(2)
    attack, first = await taken_over(store, models, rng)
    assert first.alerts, "the takeover purchase should alert at threshold 0.5"
    bodies = [orjson.loads(body) for _, body in first.alerts]
    assert {b["alert_id"] for b in bodies} == {alert_id("u7", b["event_id"]) for b in bodies}
    assert all(0.5 <= b["risk"] <= 1 and b["reasons"] for b in bodies)
    assert all(schema_accepts("fraud_alert.v1", body) for _, body in first.alerts)
    assert all(schema_accepts("profile_update.v1", body) for _, body in first.changes)
    # The same records again (a crash after the write, before the acks): same alerts, no new ones.
    again = await apply_batch(attack, store, PARAMS, lambda: NOW + 1, Stages(models=models))
    assert again.outcomes["applied"] == 0 and again.alerts == first.alerts
    # Again, with a newer record of the user fetched along: the lost alerts still go out.
    view = {"event_id": "u7-v", "user_id": "u7", "type": "view", "ts": NOW, "item_id": "i2"}
    newer = records([view], start=20_000)
    replayed = await apply_batch(
        attack + newer, store, PARAMS, lambda: NOW + 1, Stages(models=models)
    )
    assert replayed.outcomes["applied"] == 1 and replayed.alerts == first.alerts
    later = records(shopper("u7", 1, NOW, rng), start=30_000)
    quiet = await apply_batch(later, store, PARAMS, lambda: NOW + 2, Stages(models=models))
    assert all(orjson.loads(b)["event_id"] not in {x["event_id"] for x in bodies}
               for _, b in quiet.alerts)  # fmt: skip


async def test_a_replay_of_two_writes_sends_the_alerts_of_the_first_too() -> None:
    """A worker writes a batch while the one before it waits for its acks: a crash then
    replays both, and the first one's alerts may never have been sent."""
    store, models = InMemoryProfileStore(), ProfileModels(alert_threshold=0.5)
    rng = random.Random(2)
    attack, first = await taken_over(store, models, rng)
    assert first.alerts
    view = {"event_id": "u7-v", "user_id": "u7", "type": "view", "ts": NOW, "item_id": "i2"}
    newer = records([view], start=20_000)
    second = await apply_batch(newer, store, PARAMS, lambda: NOW + 1, Stages(models=models))
    assert second.outcomes["applied"] == 1 and not second.alerts
    replay = await apply_batch(
        attack + newer, store, PARAMS, lambda: NOW + 2, Stages(models=models)
    )
    assert replay.outcomes["replayed"] == len(attack) + 1
    assert replay.alerts == first.alerts


async def test_a_batch_folded_again_after_its_write_lost_does_not_teach_the_models_twice() -> None:
    store, models = InMemoryProfileStore(), ProfileModels()
    rng = random.Random(4)
    await run(models, shopper("u1", 3, NOW - 10 * 86_400_000, rng), store)  # type: ignore[arg-type]
    later = records(shopper("u1", 2, NOW - 86_400_000, random.Random(5)), start=100)
    later = [replace(r, value=r.value.replace(b'"u1-', b'"u1-later-')) for r in later]
    folded = await fold_batch(later, store, PARAMS, lambda: NOW, Stages(models=models))
    learnt = (models.risk.scored, models.segments.updates)
    # Another writer moves the profile on meanwhile: the write loses and is folded again.
    (profile,) = (await store.load(["u1"])).values()
    await store.save([Write(evolve(profile, version=profile.version + 1), profile.version)])
    result = await folded.write()
    assert result.refolded == {"u1"} and result.outcomes["applied"] == len(later)
    assert (models.risk.scored, models.segments.updates) == learnt
    # A batch the worker folds again after the write before it failed: learnt already.
    again = [
        replace(r, offset=r.offset + 100, value=r.value.replace(b'"u1-later-', b'"u1-again-'))
        for r in later
    ]
    stages = Stages(models=models)
    refolded = await fold_batch(again, store, PARAMS, lambda: NOW, stages, learn=False)
    assert (await refolded.write()).outcomes["applied"] == len(again)
    assert (models.risk.scored, models.segments.updates) == learnt


async def test_a_batch_folded_again_counts_its_alerts_once() -> None:
    store = InMemoryProfileStore()
    models = await _trained(store)
    attack = records(takeover("u7", NOW - 3_600_000), start=10_000)
    counted = models.alerts_raised
    folded = await fold_batch(attack, store, PARAMS, lambda: NOW, Stages(models=models))
    raised = models.alerts_raised - counted
    assert raised > 0
    # Another writer moves the profile on meanwhile: the write loses and is folded again.
    (profile,) = (await store.load(["u7"])).values()
    await store.save([Write(evolve(profile, version=profile.version + 1), profile.version)])
    result = await folded.write()
    assert result.refolded == {"u7"} and result.alerts
    assert models.alerts_raised - counted == raised
    # A batch the worker folds again after the write before it failed: counted already.
    again = [replace(r, offset=r.offset + 100, value=r.value.replace(b'"u7-x', b'"u7-y'))
             for r in attack]  # fmt: skip
    refolded = await fold_batch(again, store, PARAMS, lambda: NOW, Stages(models=models),
                                learn=False)  # fmt: skip
    assert (await refolded.write()).alerts
    assert models.alerts_raised - counted == raised


async def test_labels_join_the_features_kept_at_scoring_time() -> None:
    store, models = InMemoryProfileStore(), ProfileModels()
    rng = random.Random(3)
    await run(models, shopper("u1", 3, NOW - 10 * 86_400_000, rng), store)  # type: ignore[arg-type]
    labels = [
        {"event_id": "u1-p0", "user_id": "u1", "label": 0, "ts": NOW},
        {"event_id": "u1-p1", "user_id": "u1", "label": 1, "ts": NOW},
        {"event_id": "never-scored", "user_id": "u1", "label": 1, "ts": NOW},
        {"event_id": "u1-p2", "user_id": "u1", "label": 7, "ts": NOW},
    ]
    batch = [*records(labels, topic="fraud-labels"), Record("fraud-labels", 0, 4, b"u1", b"{oops")]
    result = await apply_labels(batch, store, models, NOW)
    assert result.outcomes == {"learnt": 2, "unknown": 1, "invalid": 2}
    errors = [orjson.loads(letter)["error"] for _, letter in result.dead_letters]
    assert sorted(errors) == ["invalid_json", "invalid_label"]
    for _, letter in result.dead_letters:  # within the dead-letter contract, like the events'
        validator("dead_letter.v1").validate(orjson.loads(letter))
    assert models.risk.labels == {0: 1, 1: 1}
    replay = await apply_labels(batch, store, models, NOW)  # after a restart from the snapshot
    assert replay.outcomes == {"skipped": 5} and models.risk.labels == {0: 1, 1: 1}


async def test_labels_retried_after_a_store_error_are_learnt_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker retries a batch's labels when Redis fails; the model learnt each label
    before the store refused to keep it, so again with every retry."""
    store, models = InMemoryProfileStore(), ProfileModels()
    await run(models, shopper("u1", 2, NOW - 10 * 86_400_000, random.Random(3)), store)  # type: ignore[arg-type]
    fraud = {"event_id": "u1-p0", "user_id": "u1", "label": 1, "ts": NOW}
    batch = records([fraud], topic="fraud-labels")
    keep = store.relabel_scored

    async def failing(values: object) -> None:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(store, "relabel_scored", failing)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await apply_labels(batch, store, models, NOW)
    monkeypatch.setattr(store, "relabel_scored", keep)
    assert (await apply_labels(batch, store, models, NOW)).outcomes == {"learnt": 1}
    assert models.risk.labels == {0: 0, 1: 1}


async def test_a_label_sent_again_is_learnt_once_and_a_corrected_one_again() -> None:
    store, models = InMemoryProfileStore(), ProfileModels()
    await run(models, shopper("u1", 2, NOW - 10 * 86_400_000, random.Random(3)), store)  # type: ignore[arg-type]
    legit = {"event_id": "u1-p0", "user_id": "u1", "label": 0, "ts": NOW}
    fraud = {**legit, "label": 1}
    first = await apply_labels(records([legit, legit], topic="fraud-labels"), store, models, NOW)
    assert first.outcomes == {"learnt": 1, "duplicate": 1}  # re-sent within the batch
    again = await apply_labels(records([legit], topic="fraud-labels", start=10), store, models, NOW)
    assert again.outcomes == {"duplicate": 1}  # re-sent later
    (features,) = await store.load_scored([("u1", "u1-p0")])
    assert features is not None and kept_features(features)  # still the features
    corrected = await apply_labels(
        records([fraud, legit], topic="fraud-labels", start=20), store, models, NOW
    )
    assert corrected.outcomes == {"learnt": 2}  # a chargeback, then the verdict put back
    assert models.risk.labels == {0: 2, 1: 1}


async def test_a_label_read_again_after_a_crash_past_the_snapshot_is_learnt_again() -> None:
    store, models = InMemoryProfileStore(), ProfileModels()
    await run(models, shopper("u1", 2, NOW - 10 * 86_400_000, random.Random(3)), store)  # type: ignore[arg-type]
    snapshot = copy.deepcopy(models.snapshot())
    label = records([{"event_id": "u1-p0", "user_id": "u1", "label": 1, "ts": NOW}],
                    topic="fraud-labels", start=7)  # fmt: skip
    assert (await apply_labels(label, store, models, NOW)).outcomes == {"learnt": 1}
    # The worker dies before its next snapshot: the restored models never learnt it.
    restored = ProfileModels()
    restored.restore(snapshot)
    again = await apply_labels(label, store, restored, NOW)
    assert again.outcomes == {"learnt": 1} and restored.risk.labels == {0: 0, 1: 1}


async def test_labels_of_a_merged_user_find_the_features_where_the_merge_moved_them() -> None:
    store, models = InMemoryProfileStore(), ProfileModels()
    rng = random.Random(3)
    await run(models, shopper("u1", 3, NOW - 10 * 86_400_000, rng), store)  # type: ignore[arg-type]
    merge = {"command": "merge", "from_user_id": "u1", "user_id": "acct"}
    (command,) = records([merge], topic="profile-commands", timestamp=NOW)
    merged = await apply_commands([command], store, NOW, PARAMS, Stages(models=models))
    assert merged.commands == {("merge", "merged"): 1}
    assert await store.load_scored([("u1", "u1-p0")]) == [None]  # moved, not copied
    labels = [
        {"event_id": "u1-p0", "user_id": "u1", "label": 0, "ts": NOW},
        {"event_id": "u1-p1", "user_id": "acct", "label": 1, "ts": NOW},  # either id
        {"event_id": "never-scored", "user_id": "u1", "label": 1, "ts": NOW},
    ]
    result = await apply_labels(records(labels, topic="fraud-labels"), store, models, NOW)
    assert result.outcomes == {"learnt": 2, "unknown": 1}


async def test_labels_follow_a_chain_of_merges_to_the_features() -> None:
    """A visitor merged into a guest account, the guest into a registered one: each merge
    moved the features on, and a label under any of the three ids finds them. Two users
    merged into each other end the search (`unknown`), however often it goes round."""
    store, models = InMemoryProfileStore(), ProfileModels()
    rng = random.Random(3)
    await run(models, shopper("u1", 3, NOW - 10 * 86_400_000, rng), store)  # type: ignore[arg-type]
    merges = [("u1", "guest"), ("guest", "acct"), ("x", "y"), ("y", "x")]
    commands = [  # each stamped after the one before, as a merge it follows is
        command
        for i, (a, b) in enumerate(merges)
        for command in records([{"command": "merge", "from_user_id": a, "user_id": b}],
                               topic="profile-commands", start=i, timestamp=NOW + i)
    ]  # fmt: skip
    done = await apply_commands(commands, store, NOW, PARAMS, Stages(models=models))
    assert done.commands == {("merge", "merged"): 2, ("merge", "absent"): 2}
    assert await store.load_scored([("acct", "u1-p0")]) != [None]
    labels = [
        {"event_id": "u1-p0", "user_id": "u1", "label": 1, "ts": NOW},
        {"event_id": "u1-p1", "user_id": "guest", "label": 0, "ts": NOW},
        {"event_id": "u1-p2", "user_id": "acct", "label": 1, "ts": NOW},
        {"event_id": "u1-p0", "user_id": "x", "label": 1, "ts": NOW},
    ]
    result = await apply_labels(records(labels, topic="fraud-labels"), store, models, NOW)
    assert result.outcomes == {"learnt": 3, "unknown": 1}


def test_kept_features_are_what_was_scored_in_73_bytes() -> None:
    rng = random.Random(11)
    features = {name: rng.choice([0.0, 1.0, rng.uniform(-5, 20)]) for name in KEPT_FEATURES}
    raw = keep_features(features)
    assert len(raw) == 73
    back = kept_features(raw)
    assert list(back) == list(KEPT_FEATURES)
    assert all(abs(back[n] - features[n]) <= 1e-6 * max(1.0, abs(features[n])) for n in features)
    assert kept_features(keep_features({"new_card": 1.0}))["amount_log"] == 0.0  # absent = 0
    assert kept_features(b'{"new_card": 1.0}') == {"new_card": 1.0}  # the earlier JSON format


def test_features_kept_by_a_version_with_other_features_are_not_read() -> None:
    """Another count of floats, after the format byte, cannot be told apart: the label
    failed on them as invalid JSON."""
    fewer = b"\x01" + bytes(4 * (len(KEPT_FEATURES) - 1))
    more = b"\x01" + bytes(4 * (len(KEPT_FEATURES) + 1))
    assert kept_features(fewer) is None and kept_features(more) is None
    assert kept_features(b"[1.0]") is None and kept_features(b"\xff") is None


def test_a_fresh_risk_model_raises_no_anomaly_risk_until_its_calibration_knows_the_traffic() -> (
    None
):
    """The trees score 0 through their first window; past it, every score used to sit at
    the top of a histogram of those zeros, and one event in nine alerted."""
    rng = random.Random(4)
    model = RiskModel()
    risks = []
    for _ in range(20):
        batch = [{name: rng.random() for name in TRANSACTION_FEATURES} for _ in range(50)]
        risks += [risk for risk, _ in model.score_batch(batch)]
    warm_up = model.trees.window_size + CALIBRATION_MIN_SCORES
    assert max(risks[:warm_up]) == 0.0
    assert model.calibration.learnt == len(risks) - model.trees.window_size
    later = risks[warm_up:]
    assert max(later) > 0.0
    assert sum(risk >= 0.8 for risk in later) <= 0.02 * len(later)  # about the 0.5 % it aims at


async def risks_in_batches_of(size: int, bodies: list[dict[str, object]]) -> dict[str, float]:
    store, models, stream = InMemoryProfileStore(), ProfileModels(), records(bodies)
    risks: dict[str, float] = {}
    for start in range(0, len(stream), size):
        result = await apply_batch(
            stream[start : start + size], store, PARAMS, lambda: NOW, Stages(models=models)
        )
        risks.update(result.risk_scores)
    return risks


async def test_risk_does_not_depend_on_how_many_events_a_batch_held() -> None:
    """Each event is scaled against the events before it only, and the models take a
    batch's events in event time, not user by user. (Events tied in event time on both
    sides of a batch boundary may still be taken in another order.)"""
    rng = random.Random(9)
    bodies = [b for u in range(110) for b in shopper(f"u{u}", 6, NOW - 40 * 86_400_000, rng)]
    bodies.sort(key=lambda b: int(str(b["ts"])))
    for before, body in itertools.pairwise(bodies):  # one log order, whatever the batches
        body["ts"] = max(int(str(body["ts"])), int(str(before["ts"])) + 1)
    by_size = [await risks_in_batches_of(size, bodies) for size in (97, 1000, 5000)]
    assert len(by_size[0]) > 1000 and max(by_size[0].values()) > 0  # past the warm-up
    assert by_size[0] == by_size[1] == by_size[2]


async def test_segments_count_an_order_of_many_lines_once() -> None:
    """The segments' orders and average order are per order, not per purchase event."""
    sent = [("o1", 10.0), ("o1", 20.0), ("o1", 30.0), ("o2", 40.0)]
    lines = [
        {"event_id": f"l{i}", "user_id": "u", "type": "purchase", "ts": NOW - 1000 + i,
         "amount": amount, "order_id": order}
        for i, (order, amount) in enumerate(sent)
    ]  # fmt: skip
    store, models = InMemoryProfileStore(), ProfileModels()
    await run(models, lines, store)
    profile = (await store.load(["u"]))["u"]
    assert (profile.orders, profile.spend) == (4, 100.0)  # the contract: purchase events
    assert profile.behaviour is not None
    features = models._profile_features(profile, profile.behaviour, None)
    assert features["orders"] == math.log1p(2)
    assert features["avg_order"] == math.log1p(50.0)


def ordinary(rng: random.Random) -> dict[str, float]:
    """Features of an ordinary purchase, with logins nowhere in the shop's data."""
    return {
        **dict.fromkeys(TRANSACTION_FEATURES, 0.0),
        "amount_log": rng.uniform(2, 5),
        "events_1h": float(rng.randint(1, 10)),
        "account_age_days": rng.uniform(2, 5),
        "since_login_hours": math.log1p(720.0),  # every event: no login in 30 days
    }


def test_a_young_account_is_a_reason_and_an_old_one_is_not() -> None:
    rng = random.Random(5)
    model = RiskModel()
    for _ in range(10):
        model.score_batch([ordinary(rng) for _ in range(100)])
    # Reasons share out what each side gave: here the trees' alarm (their top raw score).
    young = {**ordinary(rng), "account_age_days": 0.01, ANOMALY: 1.0}
    old = {**ordinary(rng), "account_age_days": 8.0, ANOMALY: 1.0}
    assert "account_age_days" in dict(model.explain(young, 0.9).reasons)
    assert "account_age_days" not in dict(model.explain(old, 0.9).reasons)


def test_the_classifier_names_no_reason_for_an_alarm_it_did_not_raise() -> None:
    """Labels taught that a new device on a purchase is fraud. A login from a new device
    in a burst of events: the classifier says no fraud, the trees raise the alarm; the
    reasons went by the label weight (0.95 to the classifier) and named the device."""
    rng = random.Random(7)
    model = RiskModel()
    for _ in range(10):
        model.score_batch([{**ordinary(rng), "new_device": float(rng.random() < 0.1)}
                           for _ in range(100)])  # fmt: skip
    for _ in range(400):
        x = {**ordinary(rng), "new_device": float(rng.random() < 0.5)}
        x["is_login"] = float(rng.random() < 0.5)
        model.learn_label({**x, ANOMALY: 0.5}, bool(x["new_device"] and not x["is_login"]))
    login = {**ordinary(rng), "new_device": 1.0, "is_login": 1.0, "amount_log": 0.0,
             "events_1h": 60.0}  # fmt: skip
    [(risk, _)] = model.score_batch([{**login, ANOMALY: 1.0}], learn=False)
    reasons = model.explain({**login, ANOMALY: 1.0}, max(risk, 0.9)).reasons
    assert model.label_weight > 0.7 and reasons[0][0] == "events_1h", reasons


def test_a_feature_that_never_varied_is_no_reason() -> None:
    """The same `since_login_hours` for every event: its spread is float rounding, which
    used to reach the z cap and make "720.0 h since the last login" a reason."""
    rng = random.Random(6)
    model = RiskModel()
    for _ in range(10):
        model.score_batch([ordinary(rng) for _ in range(100)])
    assert model.population.m2[TRANSACTION_FEATURES.index("since_login_hours")] < 1e-9
    unusual = {**ordinary(rng), "amount_log": 9.0, ANOMALY: 1.0}
    reasons = dict(model.explain(unusual, 0.9).reasons)
    assert "since_login_hours" not in reasons and "amount_log" in reasons


def test_a_reason_is_something_the_event_has() -> None:
    """Labels taught that purchases are the fraud: a purchase's top reason was "a login"
    (its is_login of 0, below the mean, times a negative weight). And a login's
    amount_vs_usual of 0 sits above the shop's mean (most orders are under a user's
    usual amount): its reasons named "order is 1.0x this user's usual amount"."""
    rng = random.Random(3)

    def event(login: bool) -> dict[str, float]:
        x = {**ordinary(rng), "is_login": float(login)}
        if login:
            x["amount_log"] = 0.0
        else:
            x["amount_vs_usual"] = rng.uniform(-3.0, 0.5)
            x["cart_to_purchase_min"] = rng.uniform(1.0, 5.0)
        return x

    model = RiskModel()
    for _ in range(12):
        model.score_batch([event(rng.random() < 0.5) for _ in range(100)])
    for _ in range(300):
        login = rng.random() < 0.5
        model.learn_label({**event(login), ANOMALY: 0.5}, not login and rng.random() < 0.7)
    purchase = {**event(False), ANOMALY: 0.5}
    [(risk, _)] = model.score_batch([purchase], learn=False)
    assert model.label_weight > 0.5 and risk > 0.2
    assert "is_login" not in dict(model.explain(purchase, risk).reasons)
    login = {**event(True), ANOMALY: 1.0}
    named = dict(model.explain(login, 0.9).reasons)
    assert named and not named.keys() & {"amount_log", "amount_vs_usual", "cart_to_purchase_min"}


def test_reasons_in_words_count_one_thing_in_the_singular() -> None:
    assert explain("orders_1m", {"orders_1m": 1.0}) == "1 other order in the last minute"
    assert explain("events_1h", {"events_1h": 3.0}) == "3 events in the last hour"


def test_labels_make_risk_separate_fraud_better() -> None:
    rng = np.random.default_rng(5)

    def sample(fraud: bool) -> dict[str, float]:
        x = {
            "amount_log": rng.normal(3.5, 0.8),
            "new_card": float(rng.random() < 0.1),
            "new_device": float(rng.random() < 0.1),
            "failed_logins_1h": float(rng.poisson(0.1)),
            "amount_vs_usual": rng.normal(0, 0.7),
            "orders_1h": float(rng.poisson(0.2)),
        }
        if fraud:  # subtle: fraud looks like a slightly bigger order on a new card
            x["new_card"] = float(rng.random() < 0.7)
            x["amount_vs_usual"] += 1.2
        return x  # fmt: skip

    model = RiskModel(seed=3)
    for _ in range(1500):
        model.score(sample(False))
    test = [(sample(y), y) for y in ([0] * 400 + [1] * 40)]
    before = auc([model.score(x, learn=False)[0] for x, _ in test], [y for _, y in test])
    for _ in range(800):
        y = rng.random() < 0.1
        model.learn_label(sample(bool(y)), bool(y))
    after = auc([model.score(x, learn=False)[0] for x, _ in test], [y for _, y in test])
    assert after > before + 0.05 and after > 0.85, (before, after)
    assert model.label_weight > 0.5


def test_segments_do_not_flap_between_two_close_centres() -> None:
    model = SegmentModel(n_segments=2, min_dwell=3, switch_margin=0.8, learn_every=1, seed=1)
    a = dict.fromkeys(SEGMENT_FEATURES, 0.0)
    b = {**a, "frequency": 1.0, "monetary": 1.0}
    for _ in range(200):  # teach two clusters
        model.assign([a, b], [(None, 0), (None, 0)], [None, None])
    middle_a = {**a, "frequency": 0.45, "monetary": 0.45}  # nearer a, barely
    middle_b = {**a, "frequency": 0.55, "monetary": 0.55}  # nearer b, barely
    state: tuple[int | None, int] = (None, 0)
    segments = []
    for i in range(40):
        [assigned] = model.assign([middle_a if i % 2 else middle_b], [state], [None], learn=False)
        state = (assigned.segment, assigned.since)
        segments.append(assigned.segment)
    assert len(set(segments)) == 1  # inside the margin: the user stays put
    far = {**a, "frequency": 3.0, "monetary": 3.0}
    [moved] = model.assign([far], [(segments[0], 10)], [None], learn=False)
    [held] = model.assign([far], [(1 - moved.segment, 1)], [None], learn=False)
    assert held.moved_from is None and held.since == 2  # min dwell not reached yet


def test_a_batch_assigned_again_is_not_counted_again_in_what_describes_a_segment() -> None:
    """A batch folded again after its write lost assigns without learning: its users'
    categories and features were counted a second time in the segments' descriptions."""
    model = SegmentModel(n_segments=2, learn_every=1, seed=4)
    low = dict.fromkeys(SEGMENT_FEATURES, 0.0)
    high = {**low, "frequency": 3.0, "monetary": 6.0}
    for _ in range(50):
        model.assign([low, high], [(None, 0), (None, 0)], ["books", "toys"])
    before = copy.deepcopy((model.top_categories, model.member_sums, model.member_counts))
    described = [model.describe(k) for k in range(2)]
    for _ in range(100):
        model.assign([high], [(None, 0)], ["garden"], learn=False)
    after = (model.top_categories, model.member_sums, model.member_counts)
    assert repr(after) == repr(before)
    assert [model.describe(k) for k in range(2)] == described


def test_a_segment_is_described_by_its_users_not_by_a_centre_they_never_reached() -> None:
    model = SegmentModel(n_segments=6, learn_every=1, seed=4)
    assert {model.describe(k) for k in range(6)} == {"no users yet"}  # random centres only
    low = dict.fromkeys(SEGMENT_FEATURES, 0.0)
    high = {**low, "frequency": 3.0, "monetary": 6.0, "orders": 2.5}
    for _ in range(200):
        model.assign([low, high], [(None, 0), (None, 0)], [None, None])
    described = [model.describe(k) for k in range(6) if model.member_counts[k]]
    assert any(w.startswith("frequent, high spend, many orders") for w in described), described
    assert any(w.startswith("occasional, low spend, few orders") for w in described), described
    assert len(described) < 6 and "no users yet" in {model.describe(k) for k in range(6)}


def test_the_same_seed_gives_the_same_segments_in_every_process() -> None:
    """River draws centres in a set's order, which changes with string hashing."""
    script = (
        "from profiling.segments import SegmentModel, SEGMENT_FEATURES\n"
        "m = SegmentModel(n_segments=4, learn_every=1)\n"
        "low = dict.fromkeys(SEGMENT_FEATURES, 0.0)\n"
        "high = {**low, 'frequency': 3.0, 'monetary': 6.0}\n"
        "for _ in range(50):\n"
        "    m.assign([low, high], [(None, 0), (None, 0)], [None, None])\n"
        "print(m.centres().round(12).tolist())\n"
    )
    centres = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(centres) == 1, centres


def test_segment_words_describe_the_centre() -> None:
    model = SegmentModel(n_segments=2, learn_every=1, seed=4)
    low = dict.fromkeys(SEGMENT_FEATURES, 0.0)
    high = {**low, "frequency": 3.0, "monetary": 6.0, "orders": 2.5}
    for i in range(400):
        model.assign([low, high], [(None, 0), (None, 0)], ["books", "electronics"])
        del i
    words = {model.describe(k) for k in range(2)}
    assert any("frequent" in w and "high spend" in w and "electronics" in w for w in words), words


def test_a_segment_is_named_after_a_category_only_when_it_stands_out() -> None:
    model = SegmentModel(n_segments=2)
    model.member_counts[:] = 1  # both have users, of the shop's average
    popular = Counter({"books": 40, "toys": 35, "garden": 25})  # the shop's favourite: books
    model.top_categories = {0: popular, 1: Counter({"books": 30, "shoes": 20, "toys": 50})}
    assert model.describe(0).endswith("often garden")  # 25 % here, 12.5 % in the shop
    assert "books" not in model.describe(0)  # about as common everywhere: says nothing
    assert model.describe(1).endswith("mostly toys")
    model.top_categories[1] = Counter({"books": 45, "shoes": 35, "toys": 20})
    assert model.describe(1).endswith("often shoes")
    same = Counter({"books": 45, "toys": 35, "garden": 20})
    model.top_categories = {0: same, 1: same.copy()}
    assert not any(w in model.describe(0) for w in ("mostly", "often"))  # nothing stands out


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_bad_threshold_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="alert_threshold"):
        ProfileModels(alert_threshold=threshold)


def test_taste_is_the_projection_of_each_users_long_vector() -> None:
    """One product for the batch gives each user what their own vector projects to."""
    models = ProfileModels(dim=8)
    rng = np.random.default_rng(5)
    vectors = [rng.standard_normal(8).astype("<f4") for _ in range(3)]

    def outcome(vec_long: bytes | None) -> Outcome:
        interest = StoredInterest(vec_long=vec_long) if vec_long is not None else None
        return Outcome(Profile("u", interest=interest), [], 0, 0, frozenset(), False)

    tastes = models._tastes(
        [
            outcome(vectors[0].tobytes()),
            outcome(None),
            outcome(vectors[1].tobytes()),
            outcome(np.zeros(16, "<f4").tobytes()),  # another encoder's space: no taste
            outcome(vectors[2].tobytes()),
        ]
    )
    assert tastes[1] is None and tastes[3] is None
    for taste, vector in zip([tastes[0], tastes[2], tastes[4]], vectors, strict=True):
        assert taste is not None
        np.testing.assert_allclose(taste, models._projection @ vector, rtol=1e-12)
