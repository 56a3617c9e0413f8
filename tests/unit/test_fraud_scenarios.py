"""Fraud scenarios: valid, repeatable events whose ground truth matches what they show."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from profiling.events import Event, decode_event
from stream.fraud_scenarios import (
    FRAUD_KINDS,
    HARD_LEGIT_SHARES,
    LABEL_JITTER,
    LEGIT_KINDS,
    Scenario,
    generate,
)

START = 1_767_225_600_000
HOURS = 48.0
END = START + int(HOURS * 3_600_000)
FRAUD_SHARE = 0.05
USERS = 400


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return generate(users=USERS, fraud_share=FRAUD_SHARE, hours=HOURS, start_ms=START, seed=3)


@pytest.fixture(scope="module")
def by_user(scenario: Scenario) -> dict[str, list[dict[str, Any]]]:
    """Each user's events in time order."""
    users: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in scenario.events:
        users[str(event["user_id"])].append(event)
    return users


def _users_of(scenario: Scenario, kind: str) -> set[str]:
    return {
        str(e["user_id"]) for e in scenario.events if scenario.kind.get(str(e["event_id"])) == kind
    }


def test_every_event_is_valid_and_inside_the_window(scenario: Scenario) -> None:
    events: list[dict[str, Any]] = scenario.events
    for event in events:
        assert isinstance(decode_event(orjson.dumps(event), END), Event), event
        assert START <= event["ts"] <= END


def test_event_ids_are_unique_and_events_are_sorted(scenario: Scenario) -> None:
    ids = [e["event_id"] for e in scenario.events]
    assert len(set(ids)) == len(ids)
    stamps = [e["ts"] for e in scenario.events]
    assert stamps == sorted(stamps)


def test_the_same_seed_repeats_and_another_seed_differs() -> None:
    a = generate(users=60, hours=24, start_ms=START, seed=11)
    b = generate(users=60, hours=24, start_ms=START, seed=11)
    c = generate(users=60, hours=24, start_ms=START, seed=12)
    assert orjson.dumps(a.events) == orjson.dumps(b.events)
    assert (a.fraud, a.scored, a.kind) == (b.fraud, b.scored, b.kind)
    strip = [{k: v for k, v in e.items() if not k.endswith("_id")} for e in a.events]
    assert strip != [{k: v for k, v in e.items() if not k.endswith("_id")} for e in c.events]


def test_scored_is_every_login_and_purchase(scenario: Scenario) -> None:
    scored = {e["event_id"] for e in scenario.events if e["type"] in ("login", "purchase")}
    assert scenario.scored == scored == set(scenario.kind)
    assert set(scenario.kind.values()) <= set(FRAUD_KINDS) | set(LEGIT_KINDS)


def test_fraud_is_exactly_the_scored_events_of_fraud_scenarios(scenario: Scenario) -> None:
    assert scenario.fraud <= scenario.scored
    assert scenario.fraud == {e for e, k in scenario.kind.items() if k in FRAUD_KINDS}
    types = {e["event_id"]: e["type"] for e in scenario.events}
    assert {types[e] for e in scenario.fraud} == {"login", "purchase"}


def test_every_scenario_occurs(scenario: Scenario) -> None:
    kinds = Counter(scenario.kind.values())
    for kind in (*FRAUD_KINDS, *LEGIT_KINDS):
        assert kinds[kind] > 0, kind
    assert kinds["normal"] > 0.7 * len(scenario.scored)
    n_fraud = round(USERS * FRAUD_SHARE)  # split evenly over the kinds, then the hard cases
    for i, kind in enumerate(FRAUD_KINDS):
        assert len(_users_of(scenario, kind)) == len(range(i, n_fraud, len(FRAUD_KINDS))), kind
    for kind, share in HARD_LEGIT_SHARES.items():
        assert len(_users_of(scenario, kind)) == round((USERS - n_fraud) * share), kind


def test_the_fraud_share_of_scored_events_is_plausible(scenario: Scenario) -> None:
    share = len(scenario.fraud) / len(scenario.scored)
    assert 0.5 * FRAUD_SHARE < share < 4 * FRAUD_SHARE, share
    none = generate(users=50, fraud_share=0.0, hours=24, start_ms=START)
    assert not none.fraud and none.scored


def _before(events: list[dict[str, Any]], ts: int, name: str) -> set[Any]:
    return {e.get(name) for e in events if e["ts"] < ts} - {None}


def test_takeover_buys_with_a_new_card_and_device_travellers_with_known_ones(
    scenario: Scenario, by_user: dict[str, list[dict[str, Any]]]
) -> None:
    for case in ("account_takeover", "traveller"):
        for user in _users_of(scenario, case):
            events = by_user[user]
            first = min(e["ts"] for e in events if scenario.kind.get(e["event_id"]) == case)
            buys = [e for e in events if e["type"] == "purchase" and e["ts"] >= first]
            assert buys and events[0]["ts"] < first  # an established user
            for buy in buys:
                new_card = buy["card_fp"] not in _before(events, first, "card_fp")
                new_device = buy["device_id"] not in _before(events, first, "device_id")
                assert new_card == new_device == (case == "account_takeover"), (case, buy)
                assert buy["country"] not in _before(events, first, "country")


def test_takeover_starts_with_failed_logins_and_buys_big(
    scenario: Scenario, by_user: dict[str, list[dict[str, Any]]]
) -> None:
    for user in _users_of(scenario, "account_takeover"):
        attack = [e for e in by_user[user] if e["event_id"] in scenario.fraud]
        logins = [e["success"] for e in attack if e["type"] == "login"]
        assert 3 <= logins.count(False) <= 8 and logins[-1] is True
        assert 1 <= sum(e["type"] == "purchase" for e in attack) <= 3
        assert attack[-1]["ts"] - attack[0]["ts"] < 30 * 60_000
        usual = sorted(
            e["amount"]
            for e in by_user[user]
            if e["type"] == "purchase" and e["event_id"] not in scenario.fraud
        )
        biggest = max(e.get("amount", 0) for e in attack)
        assert biggest > 2 * usual[len(usual) // 2] or biggest > 3000, (biggest, usual)


def test_card_testing_is_a_burst_of_tiny_purchases_on_many_cards(
    scenario: Scenario, by_user: dict[str, list[dict[str, Any]]]
) -> None:
    for user in _users_of(scenario, "card_testing"):
        buys = [e for e in by_user[user] if e["type"] == "purchase"]
        assert 5 <= len(buys) <= 20
        assert all(0.5 <= e["amount"] <= 5 for e in buys)
        assert len({e["card_fp"] for e in buys}) == len(buys)
        assert buys[-1]["ts"] - buys[0]["ts"] <= 120_000
        assert len({e["device_id"] for e in buys}) == 1


def test_new_account_high_value_buys_big_minutes_after_its_first_event(
    scenario: Scenario, by_user: dict[str, list[dict[str, Any]]]
) -> None:
    for user in _users_of(scenario, "new_account_high_value"):
        events = by_user[user]
        assert events[-1]["type"] == "purchase" and 800 <= events[-1]["amount"] <= 3000
        assert events[-1]["ts"] - events[0]["ts"] < 15 * 60_000


def test_labels_respect_fraction_negatives_and_delay(scenario: Scenario) -> None:
    delay = 6 * 3_600_000
    labels = scenario.labels(fraction=0.5, negatives=0.1, delay_ms=delay, seed=1)
    legit = scenario.scored - scenario.fraud
    by_id = {e["event_id"]: e for e in scenario.events}
    assert sum(r["label"] == 1 for r in labels) == round(0.5 * len(scenario.fraud))
    assert sum(r["label"] == 0 for r in labels) == round(0.1 * len(legit))
    assert len({r["event_id"] for r in labels}) == len(labels)
    for record in labels:
        event = by_id[record["event_id"]]
        assert record["label"] == (record["event_id"] in scenario.fraud)
        assert record["user_id"] == event["user_id"]
        lag = record["ts"] - event["ts"]
        assert delay <= lag <= delay * (1 + LABEL_JITTER)
    stamps = [r["ts"] for r in labels]
    assert stamps == sorted(stamps)
    everything = scenario.labels(fraction=1, negatives=0, delay_ms=0, seed=1)
    assert {r["event_id"] for r in everything} == scenario.fraud


def test_labels_are_deterministic_in_their_seed(scenario: Scenario) -> None:
    args: dict[str, Any] = {"fraction": 0.3, "negatives": 0.05, "delay_ms": 60_000}
    assert scenario.labels(**args, seed=5) == scenario.labels(**args, seed=5)
    assert scenario.labels(**args, seed=5) != scenario.labels(**args, seed=6)


@pytest.mark.parametrize(
    "kwargs", [{"users": 0}, {"fraud_share": 1.5}, {"fraud_share": -0.1}, {"hours": 0}]
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate(**kwargs)


def test_bad_label_arguments_are_refused(scenario: Scenario) -> None:
    with pytest.raises(ValueError):
        scenario.labels(fraction=1.2, negatives=0, delay_ms=0, seed=0)
    with pytest.raises(ValueError):
        scenario.labels(fraction=0.2, negatives=0, delay_ms=-1, seed=0)
