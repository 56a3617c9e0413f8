"""Behaviour features against a from-scratch oracle over the user's whole history."""

from __future__ import annotations

import itertools
import math
import random

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from profiling.behaviour import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    MIX_TYPES,
    NO_HISTORY_MS,
    PROFILE_FEATURES,
    TRANSACTION_FEATURES,
    TRUST_MS,
    VISIT_GAP_MS,
    Behaviour,
    _Working,
    float_rows,
    keyed_token,
    merge_behaviour,
    observe,
    observe_all,
    profile_row,
    token,
)
from profiling.events import Event

START = 1_750_000_000_000
DEVICES = ("phone-a", "laptop-b", "tablet-c")
COUNTRIES = ("DE", "FR", "US")
CARDS = ("card-1", "card-2", "card-3", "card-4")
KINDS = ("view", "add_to_cart", "purchase", "login", "search")
FIELDS = list(Behaviour.__dataclass_fields__)


def history(seed: int, n: int) -> list[Event]:
    """A user's events in ts order: bursts (velocity) and gaps (days)."""
    rng = random.Random(seed)
    ts, events = START, []
    for i in range(n):
        ts += rng.choice((1_000, 20_000, 5 * MINUTE_MS, 3 * HOUR_MS, 2 * DAY_MS))
        kind = rng.choice(KINDS)
        events.append(
            Event(
                event_id=f"e{i}",
                user_id="u",
                type=kind,
                ts=ts,
                device_id=rng.choice(DEVICES) if rng.random() < 0.8 else None,
                country=rng.choice(COUNTRIES) if rng.random() < 0.5 else None,
                item_id="item" if kind != "search" else None,
                query="shoes" if kind == "search" else None,
                amount=round(rng.uniform(1, 500), 2) if kind == "purchase" else None,
                card_fp=rng.choice(CARDS) if kind == "purchase" else None,
                success=rng.choice((True, True, False, None)) if kind == "login" else None,
                price=round(rng.uniform(5, 50), 2) if kind == "view" else None,
            )
        )
    return events


def oracle(past: list[Event], event: Event) -> dict[str, float]:
    """The features of `event`, recomputed from every earlier event (no bounded state)."""
    ts, purchase = event.ts, event.type == "purchase"

    def count(kind: str | None, window: int, failed: bool = False) -> int:
        return sum(
            1
            for e in past
            if (kind is None or e.type == kind)
            and (not failed or e.success is False)
            and ts - e.ts <= window
        )

    def trusted(field: str) -> set[object]:
        """Values used (not by a login that failed or whose outcome is not told) at least
        TRUST_MS before this event."""
        return {
            getattr(e, field)
            for e in past
            if not (e.type == "login" and not e.success) and ts - e.ts >= TRUST_MS
        }

    amounts = np.array([e.amount for e in past if e.type == "purchase"], dtype=float)
    logins = [e.ts for e in past if e.type == "login" and e.success is True]
    carts = [e.ts for e in past if e.type == "add_to_cart"]
    recent_cards = {e.card_fp for e in past if e.type == "purchase" and ts - e.ts <= DAY_MS}
    if purchase:
        recent_cards.add(event.card_fp)
    amount = event.amount or 0.0
    since_login = min(NO_HISTORY_MS, ts - logins[-1]) if logins else NO_HISTORY_MS
    since_cart = min(NO_HISTORY_MS, ts - carts[-1]) if carts else NO_HISTORY_MS
    return {
        "amount_log": math.log1p(amount if purchase else 0.0),
        "amount_vs_usual": math.log2((amount + 1) / (amounts.mean() + 1))
        if purchase and len(amounts)
        else 0.0,
        "first_order": float(purchase and not len(amounts)),
        "orders_1m": count("purchase", MINUTE_MS),
        "orders_1h": count("purchase", HOUR_MS),
        "events_1m": count(None, MINUTE_MS),
        "events_1h": count(None, HOUR_MS),
        "new_device": float(event.device_id is not None
                            and event.device_id not in trusted("device_id")),
        "new_country": float(event.country is not None
                             and event.country not in trusted("country")),
        "new_card": float(purchase and event.card_fp not in trusted("card_fp")),
        "cards_24h": float(len(recent_cards - {None})),
        "failed_logins_1h": count("login", HOUR_MS, failed=True),
        "account_age_days": math.log1p((ts - past[0].ts) / DAY_MS if past else 0.0),
        "since_login_hours": math.log1p(since_login / HOUR_MS),
        "cart_to_purchase_min": math.log1p(since_cart / MINUTE_MS) if purchase else 0.0,
        "is_login": float(not purchase),
        "login_failed": float(not purchase and event.success is False),
    }  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30))
def test_incremental_features_match_the_oracle(seed: int, n: int) -> None:
    events = history(seed, n)  # under 32 events, 8 devices/cards: no bound is reached
    state = Behaviour()
    for i, event in enumerate(events):
        state, features = observe(state, event)
        if event.type not in ("purchase", "login"):
            assert features is None
            continue
        assert features is not None and tuple(features) == TRANSACTION_FEATURES
        expected = oracle(events[:i], event)
        for name in TRANSACTION_FEATURES:
            assert math.isclose(features[name], expected[name], rel_tol=1e-9, abs_tol=1e-9), name


@pytest.mark.parametrize("lines", [False, True], ids=["orders", "orders-as-lines"])
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 120),
    cuts=st.lists(st.integers(0, 120), max_size=6),
)
def test_any_batch_split_folds_as_one_event_at_a_time(
    lines: bool, seed: int, n: int, cuts: list[int]
) -> None:
    """A batch's run of events gives the state and features of folding them one by one,
    also when orders come as several purchases of one order id."""
    # Past every bound: 120 events, devices and cards repeat.
    events = order_lines(seed, n) if lines else history(seed, n)
    one_by_one, expected = Behaviour(), []
    for event in events:
        one_by_one, features = observe(one_by_one, event)
        expected.append(features)
    state, got = Behaviour(), []
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    for start, end in itertools.pairwise(bounds):
        state, features_of_run = observe_all(state, events[start:end])
        got += features_of_run
    assert state == one_by_one
    assert got == expected


def test_the_working_copy_has_the_states_fields() -> None:
    assert tuple(_Working.__annotations__) == tuple(Behaviour.__dataclass_fields__)


def test_state_is_bounded_and_survives_json() -> None:
    state = Behaviour()
    rng = random.Random(3)
    for i in range(500):
        event = Event(
            event_id=f"e{i}",
            user_id="u",
            type="purchase",
            ts=START + i * 1000,
            amount=10.0,
            card_fp=f"card-{rng.randrange(100)}",
            device_id=f"device-{rng.randrange(100)}",
            country=rng.choice(COUNTRIES),
        )
        state, _ = observe(state, event)
    assert len(state.events) == 32 and len(state.orders) == 32
    assert len(state.cards) <= 8 and len(state.devices) <= 8
    raw = orjson.dumps(state.to_json())
    assert len(raw) < 2000
    assert Behaviour.from_json(orjson.loads(raw)) == state
    named = orjson.dumps(state.as_dict())  # the object form stored by earlier versions
    assert Behaviour.from_json(orjson.loads(named)) == state


def test_no_raw_identifier_is_stored() -> None:
    event = Event(
        event_id="e1",
        user_id="u",
        type="purchase",
        ts=START,
        amount=5.0,
        card_fp="4111-1111-fingerprint",
        device_id="device-serial-123",
        country="DE",
    )
    state, _ = observe(Behaviour(), event)
    stored = orjson.dumps(state.to_json()).decode()
    assert "4111" not in stored and "serial" not in stored and "DE" not in stored
    assert token("4111-1111-fingerprint") in stored


def test_keyed_fingerprints_match_only_under_their_key() -> None:
    key, other = b"k" * 16, b"o" * 16
    keyed = keyed_token(key)
    assert keyed_token(b"") is token
    assert keyed("device-serial-123") == keyed_token(key)("device-serial-123")
    assert keyed("device-serial-123") not in {
        token("device-serial-123"),
        keyed_token(other)("device-serial-123"),
    }
    assert len(keyed_token(b"x" * 100)("d")) == len(token("d"))  # a key past 64 bytes is digested
    events = [
        Event(event_id=str(i), user_id="u", type="login", ts=START + i * DAY_MS,
              device_id="device-serial-123", country="DE", success=True)
        for i in range(3)
    ]  # fmt: skip
    state = Behaviour()
    for event in events[:2]:
        state, _ = observe(state, event, keyed)
    stored = orjson.dumps(state.to_json()).decode()
    assert keyed("device-serial-123") in stored and token("device-serial-123") not in stored
    _, features = observe(state, events[2], keyed)  # known a day: familiar under the same key
    assert features is not None and features["new_device"] == 0.0
    _, features = observe(state, events[2])  # under another: a device never seen
    assert features is not None and features["new_device"] == 1.0


def test_a_device_is_familiar_a_day_after_its_first_use_and_failures_do_not_count() -> None:
    def login(ts: int, success: bool) -> Event:
        return Event(event_id=str(ts), user_id="u", type="login", ts=ts, device_id="d",
                     success=success)  # fmt: skip

    state, first = observe(Behaviour(), login(START, False))
    state, second = observe(state, login(START + 2 * DAY_MS, True))
    state, third = observe(state, login(START + 2 * DAY_MS + HOUR_MS, True))
    state, fourth = observe(state, login(START + 3 * DAY_MS + HOUR_MS, True))
    assert first and second and third and fourth
    assert [f["new_device"] for f in (first, second, third, fourth)] == [1.0, 1.0, 1.0, 0.0]


def test_a_login_whose_outcome_is_not_told_is_neither_a_success_nor_a_failure() -> None:
    def login(ts: int, success: bool | None) -> Event:
        return Event(event_id=str(ts), user_id="u", type="login", ts=ts, success=success)

    state, _ = observe(Behaviour(), login(START, True))
    state, untold = observe(state, login(START + 2 * HOUR_MS, None))
    assert untold is not None and untold["login_failed"] == 0.0
    assert state.last_login == START and not state.failures
    _, features = observe(state, login(START + 3 * HOUR_MS, True))
    assert features is not None and features["failed_logins_1h"] == 0.0
    assert math.isclose(features["since_login_hours"], math.log1p(3.0))


def test_a_login_whose_outcome_is_not_told_makes_no_device_or_country_familiar() -> None:
    """Like a failed one: an attacker's logins that leave `success` out did not, a day
    later, make their device and country look like the account's own."""

    def login(ts: int, success: bool | None) -> Event:
        return Event(event_id=str(ts), user_id="u", type="login", ts=ts, device_id="d",
                     country="RU", success=success)  # fmt: skip

    state, _ = observe(Behaviour(), login(START, None))
    assert not state.devices and not state.countries
    _, features = observe(state, login(START + 2 * DAY_MS, True))
    assert features is not None
    assert (features["new_device"], features["new_country"]) == (1.0, 1.0)


def test_the_last_scored_is_the_newest_purchase_or_login_and_a_merge_keeps_it() -> None:
    events = history(7, 60)
    state, _ = observe_all(Behaviour(), events[::-1])  # every one late but the first
    newest = max(e.ts for e in events if e.type in ("purchase", "login"))
    assert state.last_scored == newest
    assert merge_behaviour(Behaviour(), state).last_scored == newest


def test_a_late_event_keeps_the_newest_timestamps() -> None:
    state = Behaviour()
    for ts in (START + 10_000, START + 20_000, START + 5_000):
        state, _ = observe(state, Event(event_id=str(ts), user_id="u", type="login", ts=ts))
    assert state.events == (START + 5_000, START + 10_000, START + 20_000)
    assert state.last_ts == START + 20_000 and state.first_ts == START + 5_000


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 30), swaps=st.integers(1, 6))
def test_a_late_purchase_counts_only_cards_used_in_the_day_up_to_it(
    seed: int, n: int, swaps: int
) -> None:
    """`cards_24h` of an event that arrives after newer ones: cards used only after it
    counted, so the same log gave a late purchase more cards when split into batches."""
    events = history(seed, n)  # at most 4 cards: none is forgotten
    rng = random.Random(seed)
    for _ in range(swaps):  # some events arrive late
        i, j = rng.randrange(n), rng.randrange(n)
        events[i], events[j] = events[j], events[i]
    state = Behaviour()
    for at, event in enumerate(events):
        state, features = observe(state, event)
        if event.type != "purchase":
            continue
        used = {e.card_fp for e in events[:at] if e.type == "purchase"
                and 0 <= event.ts - e.ts <= DAY_MS} | {event.card_fp}  # fmt: skip
        assert features is not None and features["cards_24h"] <= len(used)


def test_a_purchase_or_login_older_than_the_last_cart_or_login_scores_as_just_after_it() -> None:
    """Late arrivals: the state knows only the latest login and cart, which are after them.

    Before, the time since them was negative, and past an hour (logins) or a
    minute (carts) `log1p` refused it: a valid event stopped the worker.
    """
    state = Behaviour()
    for kind, ts in (("login", START + 5 * HOUR_MS), ("add_to_cart", START + 5 * HOUR_MS)):
        state, _ = observe(state, Event(event_id=kind, user_id="u", type=kind, ts=ts, item_id="i",
                                        success=True if kind == "login" else None))  # fmt: skip
    late_purchase = Event(event_id="p", user_id="u", type="purchase", ts=START, amount=20.0)
    late_login = Event(event_id="l", user_id="u", type="login", ts=START + HOUR_MS)
    for event in (late_purchase, late_login):
        _, features = observe(state, event)
        assert features is not None
        assert all(math.isfinite(value) for value in features.values())
        assert features["since_login_hours"] == 0.0
    _, features = observe(state, late_purchase)
    assert features is not None and features["cart_to_purchase_min"] == 0.0


@pytest.mark.parametrize("kind", ["view", "search", "add_to_cart"])
def test_only_purchases_and_logins_are_scored(kind: str) -> None:
    event = Event(
        event_id="e", user_id="u", type=kind, ts=START, item_id="i", query="q" * (kind == "search")
    )
    _, features = observe(Behaviour(), event)
    assert features is None


# --- orders sent one event per line --------------------------------------------------


def order_lines(seed: int, n: int) -> list[Event]:
    """Purchases whose order ids repeat (an order's further lines), among other events."""
    rng = random.Random(seed)
    events, order = history(seed, n), 0
    for i, event in enumerate(events):
        if event.type == "purchase":
            order += rng.random() < 0.4  # else a further line of the order before
            events[i] = msgspec.structs.replace(event, order_id=f"o{order}")
    return events


def test_the_lines_of_one_order_are_one_transaction() -> None:
    def line(i: int, order: str, amount: float) -> Event:
        return Event(event_id=f"p{i}", user_id="u", type="purchase", ts=START + i,
                     amount=amount, order_id=order)  # fmt: skip

    events = [line(0, "o1", 10.0), line(1, "o1", 30.0), line(2, "o1", 20.0), line(3, "o2", 100.0)]
    state, features = observe_all(Behaviour(), events)
    assert [f is not None for f in features] == [True, False, False, True]
    assert len(state.orders) == 2 and len(state.events) == 2
    # The first line stands for its order, against the first lines of earlier orders.
    assert (state.amount_n, state.amount_mean, state.amount_m2) == (2, 55.0, 4050.0)  # 10, 100
    assert features[3] is not None
    assert features[3]["amount_vs_usual"] == math.log2(101 / 11)
    assert features[3]["orders_1m"] == 1.0  # one order before, not three lines
    assert state.order == token("o2")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 120))
def test_the_amount_statistics_are_those_of_each_orders_first_line(seed: int, n: int) -> None:
    events = order_lines(seed, n)
    state, _ = observe_all(Behaviour(), events)
    first_lines: dict[str, float] = {}
    for event in events:
        if event.type == "purchase" and event.order_id is not None:
            first_lines.setdefault(event.order_id, event.amount or 0.0)
    orders = np.array(list(first_lines.values()))
    assert state.amount_n == len(orders)
    if len(orders):
        assert math.isclose(state.amount_mean, orders.mean(), rel_tol=1e-9)
        assert math.isclose(state.amount_m2, ((orders - orders.mean()) ** 2).sum(),
                            rel_tol=1e-6, abs_tol=1e-6)  # fmt: skip


def test_a_state_stored_before_the_last_fields_loads_with_their_defaults() -> None:
    state, _ = observe_all(Behaviour(), order_lines(3, 40))
    assert state.order and state.away
    assert state.lines  # the last order, the time away, the visit, the last scored and
    stored = state.to_json()[: FIELDS.index("order")]  # the further lines came later
    older = Behaviour.from_json(orjson.loads(orjson.dumps(stored)))
    assert (older.order, older.away, older.visit, older.lines) == ("", 0, 0, ())
    assert older.amount_n == state.amount_n


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 80), named=st.booleans())
def test_a_state_stored_before_last_scored_knows_its_newest_order_or_told_login(
    seed: int, n: int, named: bool
) -> None:
    """Read as 0, a late purchase or login overwrote the risk of a newer one once: as
    the newest scored event the state holds, one older than it leaves the risk alone."""
    events = [e for e in history(seed, n) if not (e.type == "login" and e.success is None)]
    state, _ = observe_all(Behaviour(), events)
    if named:
        raw: object = {k: v for k, v in state.as_dict().items() if k != "last_scored"}
    else:
        raw = state.to_json()[: FIELDS.index("last_scored")]
    older = Behaviour.from_json(orjson.loads(orjson.dumps(raw)))
    assert older.last_scored == state.last_scored
    assert Behaviour.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state


def test_a_merge_keeps_the_newer_users_last_order() -> None:
    early, _ = observe_all(Behaviour(), order_lines(1, 30))
    later_event = Event(event_id="x", user_id="u", type="purchase", ts=early.last_ts + DAY_MS,
                        amount=5.0, order_id="late")  # fmt: skip
    later, _ = observe_all(Behaviour(), [later_event])
    for a, b in ((early, later), (later, early)):
        merged = merge_behaviour(a, b)
        assert merged.order == token("late")


def test_the_time_away_before_a_visit_does_not_depend_on_where_batches_split() -> None:
    """A visit split over two batches used to measure its second half's "break" from the
    first half: minutes, where the user had been away for days."""
    visit = [START + 3 * DAY_MS + i * MINUTE_MS for i in range(6)]
    events = [
        Event(event_id=f"e{i}", user_id="u", type="view", ts=ts, item_id="i")
        for i, ts in enumerate([START, START + 5 * MINUTE_MS, *visit])
    ]
    whole, _ = observe_all(Behaviour(), events)
    first, _ = observe_all(Behaviour(), events[:5])
    split, _ = observe_all(first, events[5:])
    assert whole.away == split.away == 3 * DAY_MS - 5 * MINUTE_MS
    # A late event in the time away is a visit of its own: the answer of event time.
    late = Event(event_id="late", user_id="u", type="view", ts=START + DAY_MS, item_id="i")
    after_late, _ = observe_all(whole, [late])
    in_order, _ = observe_all(Behaviour(), sorted([*events, late], key=lambda e: e.ts))
    assert after_late.away == in_order.away == 2 * DAY_MS
    # One before the previous visit ended changes nothing.
    older = Event(event_id="older", user_id="u", type="view", ts=START + MINUTE_MS, item_id="i")
    assert observe_all(after_late, [older])[0].away == after_late.away


def test_a_late_event_that_joins_two_visits_gives_the_time_away_before_both() -> None:
    """Days 0 and 10, 10 d + 40 min, then late at 10 d + 20 min: one visit from day 10,
    ten days away; the late event kept the 40 minutes."""
    times = [START, START + 10 * DAY_MS, START + 10 * DAY_MS + 40 * MINUTE_MS,
             START + 10 * DAY_MS + 20 * MINUTE_MS]  # fmt: skip
    events = [Event(event_id=f"e{i}", user_id="u", type="view", ts=t, item_id="i")
              for i, t in enumerate(times)]  # fmt: skip
    whole, _ = observe_all(Behaviour(), sorted(events, key=lambda e: e.ts))
    split, _ = observe_all(observe_all(Behaviour(), events[:3])[0], events[3:])
    assert split.away == whole.away == 10 * DAY_MS


def test_a_merge_keeps_the_time_away_both_users_events_give() -> None:
    """An account that browsed ten days ago, a visitor browsing now: merged, the account
    was "never away" (the newer side's time away alone)."""
    account = [Event(event_id="a", user_id="k", type="view", ts=START, item_id="i")]
    now = START + 10 * DAY_MS
    visitor = [Event(event_id=f"v{i}", user_id="v", type="view", ts=now + i * MINUTE_MS,
                     item_id="i") for i in range(3)]  # fmt: skip
    merged = merge_behaviour(observe_all(Behaviour(), account)[0],
                             observe_all(Behaviour(), visitor)[0])  # fmt: skip
    assert merged.away == 10 * DAY_MS and merged.visit == START + 10 * DAY_MS


@pytest.mark.parametrize("late_h", [1.0, 1.9, 0.2])
def test_a_late_event_in_the_time_away_gives_the_time_away_of_event_time(late_h: float) -> None:
    """Events at 0 and 2 h, then one late between them: the time away before the visit at
    2 h was 2 h in two batches and what event time says in one."""
    hour = 3_600_000
    ts = [START, START + 2 * hour, START + int(late_h * hour)]
    events = [Event(event_id=f"e{i}", user_id="u", type="view", ts=t, item_id="i")
              for i, t in enumerate(ts)]  # fmt: skip
    whole, _ = observe_all(Behaviour(), sorted(events, key=lambda e: e.ts))
    split, _ = observe_all(observe_all(Behaviour(), events[:2])[0], events[2:])
    assert split.away == whole.away


# --- blank identifiers ---------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", " ", "\t "])
def test_a_blank_card_or_device_is_no_card_or_device(blank: str) -> None:
    """The contract lets `card_fp` and `device_id` be empty. Scoring took an empty card
    for none, yet the state remembered it: it counted in later purchases' `cards_24h`."""

    def purchase(i: int, card: str | None, device: str | None) -> Event:
        return Event(event_id=f"p{i}", user_id="u", type="purchase", ts=START + i * HOUR_MS,
                     amount=5.0, card_fp=card, device_id=device)  # fmt: skip

    blanks, features = observe_all(Behaviour(), [purchase(0, blank, blank), purchase(1, "c", "d")])
    absent, expected = observe_all(Behaviour(), [purchase(0, None, None), purchase(1, "c", "d")])
    assert blanks == absent and features == expected
    assert features[0] is not None and features[0]["new_device"] == 0.0
    assert features[1] is not None and features[1]["cards_24h"] == 1.0


# --- visits ----------------------------------------------------------------------------


def visit_oracle(events: list[Event]) -> tuple[int, int]:
    """(first event, time away before it) of the newest visit, from every event's ts."""
    times = sorted(e.ts for e in events)
    for i in range(len(times) - 1, 0, -1):
        if times[i] - times[i - 1] > VISIT_GAP_MS:
            return times[i], times[i] - times[i - 1]
    return times[0], 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 120))
def test_every_event_an_orders_further_lines_too_takes_part_in_the_visits(
    seed: int, n: int
) -> None:
    """A further line of an order after time away moved the last event's time but began
    no visit: the events after it counted as the visit before the time away."""
    events = order_lines(seed, n)
    state, _ = observe_all(Behaviour(), events)
    assert (state.visit, state.away) == visit_oracle(events)


def test_an_orders_further_line_after_time_away_begins_a_visit_in_any_batch_split() -> None:
    """A batch is ordered by ts: a line that arrives after the view that follows it
    began a visit in a batch of its own, and none in one batch with them."""
    order = [Event(event_id=f"p{i}", user_id="u", type="purchase", ts=START + m * MINUTE_MS,
                   amount=5.0, order_id="o1") for i, m in ((0, 0), (1, 50))]  # fmt: skip
    view = [Event(event_id=f"v{i}", user_id="u", type="view", ts=START + m * MINUTE_MS,
                  item_id="i") for i, m in ((0, 10), (1, 55))]  # fmt: skip
    arrived = [order[0], view[0], view[1], order[1]]
    whole, _ = observe_all(Behaviour(), sorted(arrived, key=lambda e: e.ts))
    split, _ = observe_all(observe_all(Behaviour(), arrived[:3])[0], arrived[3:])
    assert (whole.visit, whole.away) == (split.visit, split.away) == (order[1].ts, 40 * MINUTE_MS)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 30),
    sides=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_a_merge_gives_the_visit_of_folding_both_users_events_as_one(
    seed: int, n: int, sides: list[bool]
) -> None:
    """Merged stamps without a gap are one visit, begun at the earlier start: a merge took
    the newer user's start (under 32 events in all, no bound is reached)."""
    events = history(seed, n)
    mine = [e for e, side in zip(events, sides, strict=False) if side]
    theirs = [e for e, side in zip(events, sides, strict=False) if not side]
    one, _ = observe_all(Behaviour(), events)
    a, b = observe_all(Behaviour(), mine)[0], observe_all(Behaviour(), theirs)[0]
    for merged in (merge_behaviour(a, b), merge_behaviour(b, a)):
        assert (merged.visit, merged.away) == (one.visit, one.away)


def test_a_late_event_after_an_orders_further_line_gives_the_visit_of_one_sorted_batch() -> None:
    """Purchase at 0, its further line at 40 min, a view at 45, then a view at 10 min late:
    no gap over the visit gap among them, yet the late event found one from 10 to 45 min
    (the line's time was not among the stamps it looked at): visit 45, 35 min away."""

    def purchase(i: int, minute: int) -> Event:
        return Event(event_id=f"p{i}", user_id="u", type="purchase", ts=START + minute * MINUTE_MS,
                     amount=5.0, order_id="o1")  # fmt: skip

    def view(i: int, minute: int) -> Event:
        return Event(event_id=f"v{i}", user_id="u", type="view", ts=START + minute * MINUTE_MS,
                     item_id="i")  # fmt: skip

    arrived = [purchase(0, 0), purchase(1, 40), view(0, 45), view(1, 10)]
    whole, _ = observe_all(Behaviour(), sorted(arrived, key=lambda e: e.ts))
    split, _ = observe_all(observe_all(Behaviour(), arrived[:3])[0], arrived[3:])
    assert (whole.visit, whole.away) == (split.visit, split.away) == (START, 0)


STEPS = (1_000, 10 * MINUTE_MS, 20 * MINUTE_MS, 29 * MINUTE_MS, 35 * MINUTE_MS, 3 * HOUR_MS)
# Up to 30 (time since the event before, kind) steps of a visit log (`visit_log`).
VISIT_STEPS = st.lists(
    st.tuples(st.sampled_from(STEPS), st.sampled_from(("view", "purchase", "line"))),
    min_size=1,
    max_size=30,
)


def visit_log(steps: list[tuple[int, str]]) -> list[Event]:
    """Events `steps` apart; "purchase" begins an order, "line" is a further line of the
    last one (of a new one if none yet). Steps near the visit gap: late events join and
    split visits."""
    ts, order, events = START, 0, []
    for i, (step, kind) in enumerate(steps):
        ts += step
        order += kind == "purchase" or not order
        type_ = "view" if kind == "view" else "purchase"
        events.append(Event(event_id=f"e{i}", user_id="u", type=type_, ts=ts, item_id="i",
                            amount=5.0, order_id=f"o{order}"))  # fmt: skip
    return events


@settings(max_examples=300, deadline=None)
@given(
    steps=VISIT_STEPS,
    delays=st.lists(st.integers(0, 30), min_size=30, max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=6),
)
def test_the_visit_with_order_lines_and_late_events_does_not_depend_on_batches(
    steps: list[tuple[int, str]], delays: list[int], cuts: list[int]
) -> None:
    """Events arrive late (each `delays` places after its turn), batches split anywhere and
    are ordered by ts as the engine orders them: the visit and the time away before it are
    those of one batch of every event in ts order (under 32 events: no bound is reached)."""
    events = visit_log(steps)
    n = len(events)
    arrived = [events[i] for i in sorted(range(n), key=lambda i: i + delays[i])]
    whole, _ = observe_all(Behaviour(), events)
    state = Behaviour()
    for start, end in itertools.pairwise(sorted({0, n, *(c for c in cuts if c < n)})):
        state, _ = observe_all(state, sorted(arrived[start:end], key=lambda e: e.ts))
    assert (state.visit, state.away) == (whole.visit, whole.away) == visit_oracle(events)


def test_a_state_without_further_lines_is_stored_as_the_version_before_them_wrote_it() -> None:
    """That version refuses a longer list: while a rolling upgrade runs both, it reads
    every state but those of users who sent an order as one purchase per line."""
    plain, _ = observe_all(Behaviour(), history(3, 40))
    assert len(plain.to_json()) == FIELDS.index("lines")
    with_lines, _ = observe_all(Behaviour(), order_lines(3, 40))
    assert with_lines.lines and len(with_lines.to_json()) == len(FIELDS)
    for state in (plain, with_lines):
        assert Behaviour.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state


@settings(max_examples=200, deadline=None)
@given(
    steps=VISIT_STEPS,
    sides=st.lists(st.booleans(), min_size=30, max_size=30),
)
@example(  # the line at 6 s is the last event before 35 min away: away 2,100 s, not 2,101
    steps=[*[(1_000, "view")] * 5, (1_000, "purchase"), (1_000, "line"),
           (35 * MINUTE_MS, "view"), (10 * MINUTE_MS, "view"), (29 * MINUTE_MS, "view")],
    sides=[i == 8 for i in range(30)],
)  # fmt: skip
def test_a_merge_with_order_lines_gives_the_visit_of_every_event_as_one_users(
    steps: list[tuple[int, str]], sides: list[bool]
) -> None:
    """A further line's time was in neither user's stamps: a merge found a gap it bridged."""
    events = visit_log(steps)
    mine = [e for e, side in zip(events, sides, strict=False) if side]
    theirs = [e for e, side in zip(events, sides, strict=False) if not side]
    a, b = observe_all(Behaviour(), mine)[0], observe_all(Behaviour(), theirs)[0]
    for merged in (merge_behaviour(a, b), merge_behaviour(b, a)):
        assert (merged.visit, merged.away) == visit_oracle(events)


def test_each_share_in_the_profile_features_is_its_own_event_type() -> None:
    # `profile_row` spells the shares out one by one, in MIX_TYPES order.
    counts = {kind: i + 1 for i, kind in enumerate(MIX_TYPES)}
    row = profile_row(counts, sum(counts.values()), 0.0, 0, START, START, Behaviour(), 0.0, None)
    features = dict(zip(PROFILE_FEATURES, row, strict=True))
    total = sum(counts.values())
    assert {kind: features[f"share_{kind}"] for kind in MIX_TYPES} == {
        kind: count / total for kind, count in counts.items()
    }


def test_float_rows_are_numpys_array_of_the_rows_to_the_bit() -> None:
    rng = random.Random(7)
    rows = [(rng.uniform(-1e6, 1e6), 0.1, 3, -0.0, math.log1p(rng.random())) for _ in range(9)]
    got = float_rows(rows, 5)
    assert got.dtype == np.float64 and got.shape == (9, 5)
    assert got.tobytes() == np.array(rows, dtype=np.float64).tobytes()
    assert float_rows([], 5).shape == (0, 5)


def test_the_stored_form_lists_every_field_in_declaration_order() -> None:
    """`to_json` names each field itself (no attrgetter): a field added to `Behaviour`
    must be added there too, in its place."""
    state = Behaviour(*(f"value of {name}" for name in FIELDS))  # type: ignore[arg-type]
    assert state.to_json() == [getattr(state, name) for name in FIELDS]
