"""Money counts in one currency: spend, the amount features and the price level."""

from __future__ import annotations

import math

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from profiling.behaviour import Behaviour, observe_all, transaction_features
from profiling.currency import Currencies
from profiling.events import Event
from profiling.pipeline import Record, apply_batch
from profiling.profile import Delivery, Profile, ProfileParams, apply_deliveries
from profiling.store import InMemoryProfileStore
from stream.settings import Settings
from stream.synthetic_shop import RATES, shop_rates
from tests.unit.test_behaviour import history

NOW = 1_750_000_000_000
RATES_PER_USD = Currencies("USD", {"EUR": 0.8, "JPY": 160.0})


def purchase(i: int, amount: float, currency: str = "USD", **fields: object) -> Event:
    return Event(
        event_id=f"p{i}", user_id="u", type="purchase", ts=NOW + i * 60_000, amount=amount,
        currency=currency, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def times(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def spend_of(events: list[Event], currencies: Currencies) -> Profile:
    deliveries = [Delivery(e, 0, i) for i, e in enumerate(events)]
    params = ProfileParams(heartbeat_ms=0, currencies=currencies)
    return apply_deliveries(Profile("u"), deliveries, params, NOW).profile


def test_a_value_is_brought_to_the_base_currency_or_left_out() -> None:
    assert RATES_PER_USD.value(8.0, "EUR") == 10.0
    assert RATES_PER_USD.value(1600.0, "JPY") == 10.0
    assert RATES_PER_USD.value(5.0, "USD") == 5.0
    assert RATES_PER_USD.value(3.0, "CHF") is None
    assert RATES_PER_USD.value(None, "EUR") is None
    assert Currencies().value(1600.0, "JPY") == 1600.0  # no rates: as sent
    assert [RATES_PER_USD.handling(c) for c in ("EUR", "CHF")] == ["converted", "left_out"]
    assert Currencies().handling("EUR") == "as_sent"


@pytest.mark.parametrize(
    "rates",
    [
        {"EUR": 0.0},
        {"EUR": -1.0},
        {"EUR": math.inf},
        {"EUR": math.nan},
        {"USD": 2.0},
        {"EUR": 1e-320},  # denormal: an amount over it is infinite
        {"EUR": 1e-300},  # finite amounts, but their sums and squares are not
        {"EUR": 1e300},
    ],
)
def test_rates_that_cannot_convert_are_refused(rates: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="rate"):
        Currencies("USD", rates)


@pytest.mark.parametrize(("base", "rates"), [("usd", {}), ("USD", {"EURO": 0.9})])
def test_a_code_that_is_not_three_letters_is_refused(base: str, rates: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="not a currency code"):
        Currencies(base, rates)


def test_spend_is_summed_in_the_base_currency_and_a_currency_without_a_rate_adds_no_money() -> None:
    events = [purchase(0, 8.0, "EUR"), purchase(1, 1600.0, "JPY"), purchase(2, 5.0),
              purchase(3, 3.0, "CHF")]  # fmt: skip
    converted = spend_of(events, RATES_PER_USD)
    assert (converted.spend, converted.orders) == (25.0, 4)
    as_sent = spend_of(events, Currencies())
    assert (as_sent.spend, as_sent.orders) == (1616.0, 4)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60))
def test_a_history_in_yen_gives_the_state_and_features_of_the_same_history_in_dollars(
    seed: int, n: int
) -> None:
    dollars = history(seed, n)
    yen = [msgspec.structs.replace(e, currency="JPY", amount=times(e.amount, 150),
                                   price=times(e.price, 150)) for e in dollars]  # fmt: skip
    in_usd = Currencies("USD", {"JPY": 150.0})
    want_state, want = observe_all(Behaviour(), dollars)
    got_state, got = observe_all(Behaviour(), yen, currencies=in_usd)
    assert got_state.amount_n == want_state.amount_n
    assert math.isclose(got_state.amount_mean, want_state.amount_mean, rel_tol=1e-12)
    assert math.isclose(got_state.price_sum, want_state.price_sum, rel_tol=1e-12)
    assert got_state.orders == want_state.orders
    for got_features, want_features in zip(got, want, strict=True):
        if want_features is None:
            assert got_features is None
            continue
        assert got_features is not None
        for name, value in want_features.items():
            assert math.isclose(got_features[name], value, rel_tol=1e-9, abs_tol=1e-12), name
    # Without the rate, the yen amounts are 150 times the dollars: the model sees outliers.
    _, as_sent = observe_all(Behaviour(), yen)
    for sent, right in zip(as_sent, want, strict=True):
        if right is not None and right["amount_log"] > 0:
            assert sent is not None and sent["amount_log"] > right["amount_log"] + 4


def test_an_order_without_a_rate_counts_as_an_order_but_not_in_the_amount_statistics() -> None:
    events = [purchase(0, 100.0), purchase(1, 9000.0, "CHF"), purchase(2, 100.0)]
    state, features = observe_all(Behaviour(), events, currencies=RATES_PER_USD)
    assert (state.amount_n, state.amount_mean) == (2, 100.0)
    assert len(state.orders) == 3
    assert features[1] is not None and features[2] is not None
    assert features[1]["amount_log"] == 0.0 and features[1]["amount_vs_usual"] == 0.0
    assert features[1]["first_order"] == 0.0  # the first order came before
    assert features[2]["orders_1h"] == 2.0  # the order without a rate counts
    assert features[2]["amount_vs_usual"] == 0.0  # 100 against the usual 100
    alone = transaction_features(Behaviour(), events[1], currencies=RATES_PER_USD)
    assert alone["first_order"] == 1.0 and alone["amount_log"] == 0.0


async def test_foreign_purchases_are_counted_once_each_as_they_are_applied() -> None:
    """Counted as decoded, a replayed batch (a crash before its commit) and a duplicate
    event counted their purchases again, though they applied nothing."""
    bodies = [
        {"event_id": "a", "user_id": "u", "type": "purchase", "ts": NOW, "amount": 1.0,
         "currency": "EUR"},
        {"event_id": "b", "user_id": "u", "type": "purchase", "ts": NOW, "amount": 1.0},
        {"event_id": "c", "user_id": "u", "type": "view", "ts": NOW, "item_id": "i",
         "price": 2.0, "currency": "JPY"},
        {"event_id": "d", "user_id": "u", "type": "purchase", "ts": NOW, "amount": 1.0,
         "currency": "EUR"},
        {"event_id": "a", "user_id": "u", "type": "purchase", "ts": NOW, "amount": 1.0,
         "currency": "EUR"},  # a duplicate of the first
    ]  # fmt: skip
    records = [Record("t", 0, i, b"u", orjson.dumps(b)) for i, b in enumerate(bodies)]
    for base, expected in (("USD", {"EUR": 2}), ("EUR", {"USD": 1})):
        store = InMemoryProfileStore()
        params = ProfileParams(currencies=Currencies(base))
        result = await apply_batch(records, store, params, lambda: NOW)
        assert result.outcomes["duplicate"] == 1 and result.foreign_purchases == expected
        replayed = await apply_batch(records, store, params, lambda: NOW)
        assert replayed.outcomes["replayed"] == len(records)
        assert replayed.foreign_purchases == {}


def test_the_rates_setting_reads_json_and_refuses_what_cannot_convert() -> None:
    taken = Settings(currency_rates='{"EUR": 0.92, "JPY": 150}')  # type: ignore[arg-type]
    assert taken.currencies() == Currencies("USD", {"EUR": 0.92, "JPY": 150.0})
    assert Settings(currency_rates="").currency_rates == {}  # type: ignore[arg-type]
    for value, why in [
        ("nope", "not JSON"),
        ("[" * 100_000, "not JSON"),  # deeper than the parser goes
        ('{"EUR": true}', "not true or false"),
        ('{"eur": 1}', "not a currency code"),
        ('{"EUR": 0}', "from 1e-09 to 1e\\+09 units per USD, not 0"),
        ('{"JPY": 1e-320}', "rate of JPY must be from 1e-09"),
        ('{"USD": 2}', "its rate is 1"),
        ('{"EUR": "x"}', "valid number"),
        ("[1]", "valid dictionary"),
    ]:
        with pytest.raises(ValidationError, match=why):
            Settings(currency_rates=value)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="pattern"):
        Settings(currency="usd")


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(1e-9, 1e9),
    amounts=st.lists(st.floats(0, 1e7), min_size=1, max_size=20),
)
def test_a_rate_that_is_taken_keeps_amounts_their_sums_and_squares_finite(
    rate: float, amounts: list[float]
) -> None:
    """Only above 0 and finite, a denormal rate like 1e-320 was taken and made every
    amount in its currency infinite: spend, the mean and the variance with it."""
    events = [purchase(i, amount, "EUR") for i, amount in enumerate(amounts)]
    state, features = observe_all(Behaviour(), events, currencies=Currencies("USD", {"EUR": rate}))
    assert math.isfinite(state.amount_mean) and math.isfinite(state.amount_m2)
    assert all(math.isfinite(v) for f in features if f is not None for v in f.values())
    assert math.isfinite(spend_of(events, Currencies("USD", {"EUR": rate})).spend)


def test_the_synthetic_shops_rates_have_any_of_its_currencies_as_the_unit() -> None:
    assert shop_rates("USD") == {c: r for c, r in RATES.items() if c != "USD"}
    in_euros = shop_rates("EUR")
    assert in_euros is not None and math.isclose(in_euros["USD"], 1 / RATES["EUR"])
    assert shop_rates("CHF") is None
