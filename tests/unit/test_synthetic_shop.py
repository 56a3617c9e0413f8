"""The synthetic shop: repeatable, realistic enough, and exactly as valid or broken as it says."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiling.events import MAX_EVENT_BYTES, Event, Rejection, decode_event, encode_event
from stream.synthetic_shop import EVENT_MIX, MALFORMED_KINDS, ShopGenerator

START = 1_700_000_000_000
END = START + 86_400_000


@pytest.fixture(scope="module")
def shop() -> ShopGenerator:
    return ShopGenerator(users=300, seed=7, start_ms=START, end_ms=END, products=600)


@pytest.fixture(scope="module")
def events(shop: ShopGenerator) -> list[dict[str, Any]]:
    return list(shop.events(20_000))


def test_the_same_seed_gives_the_same_bytes() -> None:
    a = ShopGenerator(users=50, seed=11, start_ms=START, end_ms=END, products=200)
    b = ShopGenerator(users=50, seed=11, start_ms=START, end_ms=END, products=200)
    assert list(a.records(2_000, 0.05, 0.05)) == list(b.records(2_000, 0.05, 0.05))
    assert list(a.events(500)) == list(a.events(500))  # each call starts from the seed again


def test_another_seed_gives_another_stream() -> None:
    a = ShopGenerator(users=50, seed=11, start_ms=START, end_ms=END, products=200)
    c = ShopGenerator(users=50, seed=12, start_ms=START, end_ms=END, products=200)
    assert list(a.records(200)) != list(c.records(200))


def test_events_has_exactly_n_valid_events_in_time_order(
    shop: ShopGenerator, events: list[dict[str, Any]]
) -> None:
    assert len(events) == 20_000
    for event in events:
        assert isinstance(decode_event(encode_event(event), END), Event), event
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)
    assert stamps[0] >= START
    assert stamps[-1] <= END
    assert stamps[len(stamps) // 2] - START > 0.3 * (END - START)  # spread over the window
    assert len({e["event_id"] for e in events}) == len(events)


def test_the_event_mix_is_roughly_as_configured(events: list[dict[str, Any]]) -> None:
    shares = Counter(e["type"] for e in events)
    for kind, target in EVENT_MIX.items():
        share = shares[kind] / len(events)
        assert abs(share - target) <= max(0.005, 0.15 * target), (kind, share, target)


def test_events_carry_what_their_type_needs(events: list[dict[str, Any]]) -> None:
    for event in events:
        kind = event["type"]
        assert event["session_id"] and event["device_id"] and len(event["country"]) == 2
        if kind == "login":
            assert isinstance(event["success"], bool) and event["ip"]
        elif kind == "search":
            assert event["query"].strip()
        else:
            assert event["item_id"] and event["title"] and "." in event["category"]
        if kind == "purchase":
            assert event["amount"] == round(event["price"] * event["quantity"], 2)
            assert event["order_id"] and len(event["currency"]) == 3
        if kind == "review":
            assert 1 <= event["rating"] <= 5 and event["text"]
    logins = [e["success"] for e in events if e["type"] == "login"]
    assert 0.8 < sum(logins) / len(logins) < 0.99  # mostly successful, a few failures


def test_users_mostly_stay_in_one_country_and_a_few_families(
    shop: ShopGenerator, events: list[dict[str, Any]]
) -> None:
    countries: dict[str, Counter[str]] = defaultdict(Counter)
    families: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        countries[event["user_id"]][event["country"]] += 1
        if event["type"] == "view":
            families[event["user_id"]][event["category"].split(".")[0]] += 1
    home = sum(c.most_common(1)[0][1] for c in countries.values())
    assert home / len(events) > 0.9
    heavy = [f for f in families.values() if sum(f.values()) >= 30]
    top3 = sum(sum(n for _, n in f.most_common(3)) for f in heavy)
    assert top3 / sum(sum(f.values()) for f in heavy) > 0.75


def test_catalog_titles_look_like_products(shop: ShopGenerator) -> None:
    products = shop.catalog.products
    assert len(products) == 600
    assert len({p.fields["item_id"] for p in products}) == 600
    assert len({p.fields["title"] for p in products}) > 450
    assert len({p.fields["category"].split(".")[0] for p in products}) >= 8
    for p in products:
        assert 3 <= len(p.fields["title"].split()) <= 16 and "  " not in p.fields["title"]
        assert p.price_usd > 0


def test_records_hold_exact_counts_of_each_label(shop: ShopGenerator) -> None:
    labelled = list(shop.labelled_records(5_000, malformed_ratio=0.1, duplicate_ratio=0.05))
    labels = Counter("malformed" if kind in MALFORMED_KINDS else kind for _, _, kind in labelled)
    assert labels == {"valid": 4_250, "malformed": 500, "duplicate": 250}


def test_every_valid_record_is_accepted_and_every_malformed_one_rejected() -> None:
    shop = ShopGenerator(users=100, seed=3, start_ms=START, end_ms=END, products=300)
    seen_kinds = set()
    for key, value, kind in shop.labelled_records(20_000, malformed_ratio=0.5):
        verdict = decode_event(value, END)
        if kind == "valid":
            assert isinstance(verdict, Event) and key == verdict.user_id.encode()
        else:
            assert isinstance(verdict, Rejection), (kind, value[:200])
            assert key  # a malformed record still has a key
            seen_kinds.add(kind)
            if kind == "oversize":
                assert len(value) > MAX_EVENT_BYTES
    assert seen_kinds == set(MALFORMED_KINDS)


def test_duplicates_repeat_earlier_valid_records_byte_for_byte(shop: ShopGenerator) -> None:
    earlier: set[tuple[bytes, bytes]] = set()
    ids: list[str] = []
    stamps: list[int] = []
    duplicates = 0
    for key, value, kind in shop.labelled_records(4_000, 0.02, 0.1):
        if kind == "valid":
            earlier.add((key, value))
            event = decode_event(value, END)
            assert isinstance(event, Event)
            ids.append(event.event_id)
            stamps.append(event.ts)
        elif kind == "duplicate":
            assert (key, value) in earlier
            duplicates += 1
    assert duplicates == 400
    assert len(set(ids)) == len(ids)
    assert stamps == sorted(stamps)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**63),
    users=st.integers(1, 40),
    n=st.integers(0, 400),
    span_ms=st.integers(1, 10 * 86_400_000),
)
def test_any_seed_and_window_gives_valid_ordered_events(
    seed: int, users: int, n: int, span_ms: int
) -> None:
    shop = ShopGenerator(
        users=users, seed=seed, start_ms=START, end_ms=START + span_ms, products=50
    )
    events = list(shop.events(n))
    assert len(events) == n
    for event in events:
        assert isinstance(decode_event(encode_event(event), START + span_ms), Event)
        assert START <= event["ts"] <= START + span_ms
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


@pytest.mark.parametrize(
    ("users", "start", "end", "products"),
    [(0, START, END, 10), (10, START, START, 10), (10, 0, END, 10), (10, START, END, 0)],
)
def test_bad_arguments_are_refused(users: int, start: int, end: int, products: int) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        ShopGenerator(users=users, seed=1, start_ms=start, end_ms=end, products=products)


@pytest.mark.parametrize(("malformed", "duplicates"), [(0.7, 0.5), (-0.1, 0.0), (1.0, 0.1)])
def test_impossible_ratios_are_refused(
    shop: ShopGenerator, malformed: float, duplicates: float
) -> None:
    with pytest.raises(ValueError, match="ratios"):
        list(shop.records(100, malformed, duplicates))
