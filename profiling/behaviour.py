"""Per-user behaviour state and the feature dicts the River models read.

`Behaviour` is a small, fixed-size record of what a user did recently: the
timestamps of their last events, orders and failed logins, the devices,
countries and cards they used (as short digests, never raw), a running mean
and variance of their order amounts, their last login and last cart. It is
stored with the profile and folded forward only by events the engine applies,
so it is idempotent like every other aggregate. Amounts and prices count in
the worker's base currency (`profiling.currency`); one without a rate is left
out of the amount statistics and the average price.

`observe` folds one event in and, for a purchase or a login, returns the
transactional features *as they were when the event happened* (the state
before it): amount against the user's own history, velocity in the last
minute / hour / day, what is new about it. Everything is event time, so a
replay of the same log computes the same features. `profile_row`
summarises a whole profile for segmentation: recency, frequency, monetary
value, the event-type mix, average price, category concentration and a
4-dimensional projection of `vec_long`.

Every feature is a plain float; the dicts have tens of entries, never the
384-dimensional vector itself (DESIGN.md §7: River costs per feature).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import operator
import struct
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np

from profiling import slots
from profiling.currency import SAME_CURRENCY, Currencies
from profiling.events import Event

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
RECENT_EVENTS: Final = 32  # timestamps kept: velocity counts saturate at this
RECENT_ORDERS: Final = 32
RECENT_FAILURES: Final = 16
RECENT_LINES: Final = 32  # an order's further lines: as many as event stamps, for the visits
KNOWN_TOKENS: Final = 8  # devices, countries, cards remembered per user
TRUST_MS: Final = 24 * 3_600_000  # a device, country or card is familiar a day after first use
NO_HISTORY_MS: Final = 30 * DAY_MS  # "never": how far back a missing login or cart counts
VISIT_GAP_MS: Final = 30 * MINUTE_MS  # a longer gap between events starts a new visit
TOKEN_BYTES: Final = 6
MAX_KEY_BYTES: Final = 64  # BLAKE2b's longest key; a longer one is digested to this
SCORED_TYPES: Final = frozenset({"purchase", "login"})
MIX_TYPES: Final = ("view", "click", "search", "add_to_cart", "purchase", "review", "login")
VECTOR_PROJECTION_DIMS: Final = 4

TRANSACTION_FEATURES: Final = (
    "amount_log",
    "amount_vs_usual",
    "first_order",
    "orders_1m",
    "orders_1h",
    "events_1m",
    "events_1h",
    "new_device",
    "new_country",
    "new_card",
    "cards_24h",
    "failed_logins_1h",
    "account_age_days",
    "since_login_hours",
    "cart_to_purchase_min",
    "is_login",
    "login_failed",
)


Fingerprint = Callable[[str], str]  # an identifier to the short digest profiles keep


def _fingerprints(key: bytes) -> Fingerprint:
    """Identifiers to 12-hex-digit BLAKE2b digests under `key` (b"": BLAKE2b unkeyed), cached."""

    @lru_cache(maxsize=1 << 16)
    def fingerprint(value: str) -> str:
        digest = hashlib.blake2b(
            value.encode(), digest_size=TOKEN_BYTES, key=key, person=b"profiler"
        )
        return digest.hexdigest()

    return fingerprint


# A short digest of an identifier (device, country, card): profiles keep no raw values.
# Unkeyed, anyone can test a guessed identifier against it; see `keyed_token`.
token: Final = _fingerprints(b"")


def keyed_token(key: bytes) -> Fingerprint:
    """`token` under a secret `key` (BLAKE2b's keyed mode, a MAC); `token` itself if empty.

    Without the key, a stored fingerprint cannot be matched with a guessed
    device id or card fingerprint. Every worker of a group needs the same key,
    and a new key makes every device, country and card a profile knows look
    new once.
    """
    if not key:
        return token
    if len(key) > MAX_KEY_BYTES:
        key = hashlib.blake2b(key).digest()
    return _fingerprints(key)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Bounded per-user state behind the features. Tuples are oldest first."""

    first_ts: int = 0
    last_ts: int = 0
    events: tuple[int, ...] = ()  # ts of the last RECENT_EVENTS events
    orders: tuple[int, ...] = ()  # ts of the last RECENT_ORDERS purchases
    failures: tuple[int, ...] = ()  # ts of the last failed logins
    # (digest, first used ts, last used ts), least recently used first; for devices and
    # countries the last use is refreshed when they become the most recent. A failed
    # login does not count as use, nor one whose outcome is not told: an attacker's
    # device never becomes familiar by failing, and a burst of fraud from one new
    # device stays "new" all along.
    devices: tuple[tuple[str, int, int], ...] = ()
    countries: tuple[tuple[str, int, int], ...] = ()
    cards: tuple[tuple[str, int, int], ...] = ()
    amount_n: int = 0
    amount_mean: float = 0.0
    amount_m2: float = 0.0  # Welford's sum of squared deviations
    price_n: int = 0
    price_sum: float = 0.0
    # The last successful login's ts. A login whose outcome is not told (`success` absent)
    # is no success, nor a failure: it counts as an event only (its device and country
    # are not vouched for).
    last_login: int = 0
    last_cart: int = 0
    # The last order's id, fingerprinted: a purchase with the same order id is a further
    # line of it (a shop that sends one purchase per line).
    order: str = ""
    away: int = 0  # ms between the current visit's first event and the event before it
    visit: int = 0  # ts of the current visit's first event (0: not known, an earlier state)
    # ts of the newest purchase or login scored: the one the profile's `risk` is of, which
    # a late event leaves alone (0: none, or not known: an earlier state).
    last_scored: int = 0
    # ts of the last RECENT_LINES further lines of orders. Not in `events`, which the
    # velocity features count (an order counts once), yet activity that the visits
    # must see: a late event rebuilds them from both runs of times.
    lines: tuple[int, ...] = ()

    def to_json(self) -> list[Any]:
        """The stored form: the fields' values in declaration order (no names: ~17 % smaller).

        Without further lines, `lines` is left out: the form the version before it
        wrote, which that version reads (it refuses a longer list) while a rolling
        upgrade runs both.
        """
        # Spelt out, not `attrgetter(*fields)`, once per write: attribute reads in
        # bytecode cost a fifth as much (tests/unit/test_behaviour.py checks the order).
        values = [
            self.first_ts,
            self.last_ts,
            self.events,
            self.orders,
            self.failures,
            self.devices,
            self.countries,
            self.cards,
            self.amount_n,
            self.amount_mean,
            self.amount_m2,
            self.price_n,
            self.price_sum,
            self.last_login,
            self.last_cart,
            self.order,
            self.away,
            self.visit,
            self.last_scored,
        ]
        if self.lines:
            values.append(self.lines)
        return values

    @classmethod
    def from_json(cls, raw: Sequence[Any] | Mapping[str, Any]) -> Behaviour:
        """From `to_json`'s list, or from the object with field names written before."""
        if isinstance(raw, Mapping):
            written = len(_FIELDS) if "last_scored" in raw else _LAST_SCORED
            raw = [raw.get(name, default) for name, default in _DEFAULTS.items()]
        else:
            written = len(raw)
        values = list(raw)
        values += _DEFAULT_VALUES[len(values) :]  # fields added since it was written
        for i in _STAMP_RUNS:
            values[i] = tuple(values[i])
        for i in _TOKEN_SETS:
            values[i] = tuple(map(tuple, values[i]))
        if written <= _LAST_SCORED:  # written before it: the newest scored event it holds
            values[_LAST_SCORED] = _newest_scored(*(values[i] for i in _SCORED_SOURCES))
        return _build(*values)

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(_FIELDS, _ALL_VALUES(self), strict=True))


_FIELDS: Final = tuple(Behaviour.__dataclass_fields__)
_ALL_VALUES: Final = operator.attrgetter(*_FIELDS)  # every field's value, in order, one call
_build: Final = slots.builder(Behaviour)  # Behaviour(*values) without the frozen __init__
_DEFAULTS: Final = {name: getattr(Behaviour(), name) for name in _FIELDS}
_DEFAULT_VALUES: Final = list(_DEFAULTS.values())
_LAST_SCORED: Final = _FIELDS.index("last_scored")
_SCORED_SOURCES: Final = tuple(_FIELDS.index(name) for name in ("orders", "failures", "last_login"))
_STAMP_RUNS: Final = tuple(
    _FIELDS.index(name) for name in ("events", "orders", "failures", "lines")
)
_TOKEN_SETS: Final = tuple(_FIELDS.index(name) for name in ("devices", "countries", "cards"))


def _newest_scored(orders: tuple[int, ...], failures: tuple[int, ...], last_login: int) -> int:
    """The newest purchase or login a state knows of: its last order, failed or successful
    login (0: none). A state written before `last_scored` holds the risk of that one (or
    of a later login whose outcome was not told, which it does not keep), so a late event
    older than it leaves the risk alone, as with `last_scored`."""
    return max(orders[-1:] + failures[-1:] + (last_login,))


def observe(
    state: Behaviour,
    event: Event,
    fingerprint: Fingerprint = token,
    currencies: Currencies = SAME_CURRENCY,
) -> tuple[Behaviour, dict[str, float] | None]:
    """`state` with `event` folded in, and the event's features if it is a purchase or login."""
    state, [features] = observe_all(state, [event], fingerprint, currencies)
    return state, features


def observe_all(  # noqa: PLR0912, PLR0915 - one loop over every event, kept flat: hot path
    state: Behaviour,
    events: Sequence[Event],
    fingerprint: Fingerprint = token,
    currencies: Currencies = SAME_CURRENCY,
) -> tuple[Behaviour, list[dict[str, float] | None]]:
    """Fold `events` in order; for each, its features (purchases and logins) or None.

    One mutable working copy for the whole run and one frozen result at the end:
    a user's batch costs one `Behaviour`, not one per event. What every event
    touches (first and last time, the event times, prices) lives in local
    variables meanwhile; the rest only purchases and logins change.
    """
    if not events:
        return state, []
    # The working copy (`_Working`), here, not in a method of its own: once per user.
    work = _working_copy(state)
    # The event times are kept sorted (a late one is inserted): `_features` reads them.
    work.events = stamps = list(state.events)  # the other runs change seldom: tuples still
    features: list[dict[str, float] | None] = []
    first_ts, last_ts = state.first_ts, state.last_ts
    price_n, price_sum = work.price_n, work.price_sum
    # Without rates every price counts as sent: no call per event for it.
    base = currencies.base if currencies.rates else None
    device = country = None  # raw ids of the most recent device and country remembered
    for event in events:
        ts, kind = event.ts, event.type
        price = event.price
        if price is not None:
            if base is not None and event.currency != base:
                price = currencies.value(price, event.currency)
            if price is not None:
                price_n += 1
                price_sum += price
        if kind == "purchase":
            amount, order, line = work.order_of(event, fingerprint, currencies)
        else:
            amount, order, line = None, "", False
        if kind in SCORED_TYPES and not line:
            work.first_ts = first_ts
            work.last_scored = ts if ts > work.last_scored else work.last_scored
            del stamps[:-RECENT_EVENTS]  # the visits see the same run as the features
            features.append(_features(work, event, fingerprint, amount))
        else:
            features.append(None)
        # Every event, a further line of an order too, is activity: it takes part in
        # the visits (after time away, a line begins one) as in the first and last time.
        if not first_ts or ts < first_ts:
            first_ts = ts
        if ts - last_ts > VISIT_GAP_MS and last_ts:  # a new visit, after time away
            work.away, work.visit = ts - last_ts, ts
        elif ts < work.visit:  # late, and before the current visit began
            _late_visit(work, ts, first_ts)
        elif not last_ts:
            work.visit = ts
        late = ts < last_ts  # no kept time is after last_ts: this one is inserted, in order
        last_ts = ts if ts > last_ts else last_ts  # not max(): a tenth of the cost
        if line:  # a further line of the last order: one transaction, counted at its first
            work.lines = _added(work.lines, ts, RECENT_LINES)  # apart, for the visits alone
            continue
        if late:
            insort(stamps, ts)
        else:
            stamps.append(ts)
        if kind == "login":
            success = event.success
            if success:
                work.last_login = ts if ts > work.last_login else work.last_login
            else:
                if success is False:
                    work.failures = _added(work.failures, ts, RECENT_FAILURES)
                # Only a login known to have succeeded vouches for its device and country:
                # one whose outcome is not told may be an attacker's failure just as well.
                continue
        elif kind == "purchase":
            work.purchase(event, fingerprint, amount, order)
        elif kind == "add_to_cart" and ts > work.last_cart:
            work.last_cart = ts
        # Most events of a session share device and country: those are not even digested.
        # (Here, not in a method: a first event of each user's batch comes this way.)
        if event.device_id != device and (named := _named(event.device_id)) is not None:
            device = named
            work.devices = _touch(work.devices, fingerprint(named), ts)
        if event.country != country and event.country is not None:
            country = event.country
            work.countries = _touch(work.countries, fingerprint(country), ts)
    work.first_ts = first_ts
    work.last_ts = last_ts
    work.price_n = price_n
    work.price_sum = price_sum
    # The working copy made the `Behaviour` it mirrors, here too, not in a method: its runs
    # cut to their bounds (only when over: mostly they are not) and made tuples in place,
    # then the object itself a `Behaviour`. Python allows that class change between
    # classes of the same slots (`slots.copier` relies on it too): no second object and
    # no field copied, which cost about 2,000 instructions once per user and batch.
    if len(stamps) > RECENT_EVENTS:
        del stamps[:-RECENT_EVENTS]
    work.events = tuple(stamps)  # type: ignore[assignment]
    if len(work.orders) > RECENT_ORDERS:
        work.orders = work.orders[-RECENT_ORDERS:]
    if len(work.failures) > RECENT_FAILURES:
        work.failures = work.failures[-RECENT_FAILURES:]
    if len(work.lines) > RECENT_LINES:
        work.lines = work.lines[-RECENT_LINES:]
    work.__class__ = Behaviour  # type: ignore[assignment]
    return work, features  # type: ignore[return-value]


def _late_visit(work: _Working, ts: int, first_ts: int) -> None:
    """A late event before the current visit's start: the visit and the time away before
    it as one batch in ts order gives them (batches split anywhere give one answer).

    What the state holds of the current visit is exact: no event in the time away
    before it, and the previous visit's last event just before that. A late event
    before that last one changes nothing; one in the time away shortens it or begins
    the visit earlier. Only one that joins the two visits needs more: where the
    previous visit began (`_visit_ending`).
    """
    visit, away = work.visit, work.away
    before = visit - away  # the previous visit's last event (away 0: none known)
    if away and ts <= before:
        return
    if visit - ts > VISIT_GAP_MS:
        work.away = visit - ts
    elif not away:
        work.visit = ts
    elif ts - before > VISIT_GAP_MS:
        work.visit, work.away = ts, ts - before
    else:
        work.visit, work.away = _visit_ending(work, before, first_ts)


def _visit_ending(work: _Working, last: int, first_ts: int) -> tuple[int, int]:
    """(first event, time away before it) of the visit whose last event is at `last`.

    From the kept times of events and of orders' further lines (every event takes
    part in the visits) back to where either run was cut: an older gap could hide
    an event no longer kept. A visit that reaches further back begins at the oldest
    time known, with the time away known before (a stand-in), or none if that time
    is the user's first event.
    """
    stamps, lines = work.events, work.lines
    floor = max(
        min(stamps) if len(stamps) >= RECENT_EVENTS else 0,
        min(lines) if len(lines) >= RECENT_LINES else 0,
    )
    times = sorted({last, *(t for t in (*stamps, *lines) if floor <= t < last)})
    for i in range(len(times) - 1, 0, -1):
        if times[i] - times[i - 1] > VISIT_GAP_MS:
            return times[i], times[i] - times[i - 1]
    return times[0], 0 if times[0] == first_ts else work.away


def feature_matrix(
    features: Sequence[Mapping[str, float]], names: tuple[str, ...]
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """One row per feature dict, columns in `names` order; a missing feature is 0.

    Read-only (`float_rows`).
    """
    try:  # the usual case, every name present: one C call per row
        row = _row_getter(names)
        return float_rows([row(f) for f in features], len(names))
    except KeyError:
        return float_rows([[f.get(n, 0.0) for n in names] for f in features], len(names))


def float_rows(
    rows: Sequence[Sequence[float]], width: int
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """`np.array(rows, dtype=np.float64)` for rows of `width` floats, read-only.

    numpy converts a list of rows value by value through its generic sequence
    discovery: about 360 instructions a value, a fifth of the segments' stage at
    a steady stream's batch sizes. Packed as doubles by `struct` and viewed
    (the same bits), a value costs 150.
    """
    count = len(rows) * width
    packed = struct.pack(f"{count}d", *itertools.chain.from_iterable(rows))
    return np.frombuffer(packed, dtype=np.float64).reshape(len(rows), width)


@lru_cache(maxsize=8)
def _row_getter(names: tuple[str, ...]) -> Any:  # operator.itemgetter of those names
    return operator.itemgetter(*names)


def transaction_features(
    state: Behaviour,
    event: Event,
    fingerprint: Fingerprint = token,
    currencies: Currencies = SAME_CURRENCY,
) -> dict[str, float]:
    """What a fraud model should know about this purchase or login, from the state before it."""
    purchase = event.type == "purchase"
    amount = currencies.value(event.amount, event.currency) if purchase else None
    return _features(state, event, fingerprint, amount)


def _features(
    v: Behaviour | _Working, event: Event, fingerprint: Fingerprint, amount_in_base: float | None
) -> dict[str, float]:
    """`transaction_features` over a state's fields (a `Behaviour`'s, or a working copy's).

    `amount_in_base`: a purchase's amount in the base currency; None for a login, or
    a purchase in a currency without a rate (its amount features are then 0).
    """
    ts = event.ts
    purchase = event.type == "purchase"
    known = amount_in_base is not None
    amount = float(amount_in_base) if amount_in_base is not None else 0.0
    card = _named(event.card_fp) if purchase else None
    if card is not None:
        card = fingerprint(card)
    # Cards with a use known in the day up to the event: for a late one, a card first
    # used after it is no card it was paid among (the windows below end at it too).
    since = ts - DAY_MS
    cards_24h: set[str] = set()  # a loop, not a comprehension: no closure over `ts` and `since`
    for known_card, first, used in v.cards:
        if since <= used <= ts or since <= first <= ts:
            cards_24h.add(known_card)
    if card is not None:
        cards_24h.add(card)
    device = _named(event.device_id)
    if device is not None:
        device = fingerprint(device)
    country = fingerprint(event.country) if event.country is not None else None
    # A working copy's runs may hold more than their bounds: the counts saturate at them.
    orders, events, failures = v.orders, v.events, v.failures
    if len(orders) > RECENT_ORDERS:
        orders = orders[-RECENT_ORDERS:]
    if len(events) > RECENT_EVENTS:
        events = events[-RECENT_EVENTS:]
    if len(failures) > RECENT_FAILURES:
        failures = failures[-RECENT_FAILURES:]
    # The windows end at the event (_within's counts, spelt out: each run's end found once).
    orders_to = bisect_right(orders, ts)
    events_to = bisect_right(events, ts)
    amount_n, first_ts = v.amount_n, v.first_ts
    # Conditionals, not float(bool): a call each.
    return {
        "amount_log": math.log1p(amount),
        "amount_vs_usual": math.log2((amount + 1.0) / (v.amount_mean + 1.0))
        if known and amount_n
        else 0.0,
        "first_order": 1.0 if purchase and not orders else 0.0,
        "orders_1m": float(orders_to - bisect_left(orders, ts - MINUTE_MS)),
        "orders_1h": float(orders_to - bisect_left(orders, ts - HOUR_MS)),
        "events_1m": float(events_to - bisect_left(events, ts - MINUTE_MS)),
        "events_1h": float(events_to - bisect_left(events, ts - HOUR_MS)),
        "new_device": 1.0 if device is not None and not _familiar(v.devices, device, ts) else 0.0,
        "new_country": 1.0
        if country is not None and not _familiar(v.countries, country, ts)
        else 0.0,
        "new_card": 1.0 if card is not None and not _familiar(v.cards, card, ts) else 0.0,
        "cards_24h": float(len(cards_24h)),
        "failed_logins_1h": float(_within(failures, ts, HOUR_MS)),
        "account_age_days": math.log1p(max(0, ts - first_ts) / DAY_MS if first_ts else 0.0),
        "since_login_hours": math.log1p(_since(v.last_login, ts) / HOUR_MS),
        "cart_to_purchase_min": math.log1p(_since(v.last_cart, ts) / MINUTE_MS)
        if purchase
        else 0.0,
        "is_login": 0.0 if purchase else 1.0,
        "login_failed": 1.0 if not purchase and event.success is False else 0.0,
    }


def _named(identifier: str | None) -> str | None:
    """A device id or card fingerprint, or None when the event names none: the contract
    lets either be empty, and a blank one is no device or card of its own (the one
    test of it that scoring and the state both use)."""
    return identifier if identifier and not identifier.isspace() else None


def _familiar(known: tuple[tuple[str, int, int], ...], value: str, ts: int) -> bool:
    """Whether `value` was first used at least TRUST_MS before `ts` (each value is listed once)."""
    for known_value, first, _ in known:
        if known_value == value:
            return ts - first >= TRUST_MS
    return False


def _within(stamps: Sequence[int], ts: int, window_ms: int) -> int:
    """How many of the (sorted) stamps lie in [ts - window_ms, ts]."""
    return bisect_right(stamps, ts) - bisect_left(stamps, ts - window_ms)


def _since(then: int, ts: int) -> float:
    """Milliseconds from `then` to `ts`, at most NO_HISTORY_MS; 0 for an event that is
    older than `then` (it arrived late: the state knows only the latest login or cart)."""
    if not then:
        return float(NO_HISTORY_MS)
    return float(min(NO_HISTORY_MS, max(0, ts - then)))


class _Working:
    """A mutable copy of a `Behaviour` while a batch of one user's events is folded in.

    The same field names as `Behaviour` (so `_features` reads either). The event
    times, which every event adds to, are a list here (kept sorted, trimmed when
    frozen); the runs few events change stay tuples (`_added`). `observe_all`
    makes it, and at its end makes it the `Behaviour` it mirrors.
    """

    __slots__ = _FIELDS

    first_ts: int
    last_ts: int
    events: list[int]
    orders: tuple[int, ...]
    failures: tuple[int, ...]
    devices: tuple[tuple[str, int, int], ...]
    countries: tuple[tuple[str, int, int], ...]
    cards: tuple[tuple[str, int, int], ...]
    amount_n: int
    amount_mean: float
    amount_m2: float
    price_n: int
    price_sum: float
    last_login: int
    last_cart: int
    order: str
    away: int
    visit: int
    last_scored: int
    lines: tuple[int, ...]

    def order_of(
        self,
        event: Event,
        fingerprint: Fingerprint,
        currencies: Currencies,
    ) -> tuple[float | None, str, bool]:
        """A purchase's amount in the base currency (None: no rate), its order id's
        fingerprint ("" without one), and whether it is a further line of the last order."""
        amount = currencies.value(event.amount, event.currency)
        if event.order_id is None:
            return amount, "", False
        order = fingerprint(event.order_id)
        return amount, order, order == self.order

    def purchase(
        self, event: Event, fingerprint: Fingerprint, amount: float | None, order: str
    ) -> None:
        """A new order (`order_of`'s parts): `amount` None counts the order, not its money."""
        self.orders = _added(self.orders, event.ts, RECENT_ORDERS)
        self.order = order
        if amount is not None:
            n = self.amount_n + 1
            delta = amount - self.amount_mean
            mean = self.amount_mean + delta / n
            self.amount_n, self.amount_mean = n, mean
            self.amount_m2 += delta * (amount - mean)
        card = _named(event.card_fp)
        if card is not None:
            self.cards = _remember(self.cards, fingerprint(card), event.ts)


_working_copy: Final = slots.copier(_Working)


def _added(stamps: tuple[int, ...], ts: int, bound: int) -> tuple[int, ...]:
    """`stamps` with `ts` in order (a late event is inserted); the oldest dropped past twice
    `bound`. A new tuple each time: orders, failed logins and further lines are few, and
    as tuples the working copy takes them from the state and gives them back as they are."""
    if not stamps or ts >= stamps[-1]:
        stamps = (*stamps, ts)
    else:
        at = bisect_right(stamps, ts)
        stamps = (*stamps[:at], ts, *stamps[at:])
    return stamps[-bound:] if len(stamps) > 2 * bound else stamps


def _touch(
    known: tuple[tuple[str, int, int], ...], value: str, ts: int
) -> tuple[tuple[str, int, int], ...]:
    """`_remember`, with a shortcut for the common case: the most recent one, used again."""
    if known and known[-1][0] == value and known[-1][1] <= ts:
        return known  # first use unchanged; its last use is only refreshed by a switch
    return _remember(known, value, ts)


def _remember(
    known: tuple[tuple[str, int, int], ...], value: str, ts: int
) -> tuple[tuple[str, int, int], ...]:
    """`value` used at `ts`: first use kept, last use moved on, most recently used last.

    The least recently used falls out past KNOWN_TOKENS.
    """
    first, last = ts, ts
    rest = []
    for entry in known:
        if entry[0] == value:
            first, last = min(entry[1], ts), max(entry[2], ts)
        else:
            rest.append(entry)
    return (*rest, (value, first, last))[-KNOWN_TOKENS:]


def merge_behaviour(a: Behaviour, b: Behaviour) -> Behaviour:
    """Two users' states as one user's (a profile merged into another: `profiling.merging`).

    The same bounds as a fold: the newest stamps, the most recently used
    tokens (each with its earliest first use and latest last use); the order
    amounts' running mean and variance combined exactly (Chan et al.).
    """
    n = a.amount_n + b.amount_n
    delta = b.amount_mean - a.amount_mean
    mean = a.amount_mean + delta * b.amount_n / n if n else 0.0
    m2 = a.amount_m2 + b.amount_m2 + delta * delta * a.amount_n * b.amount_n / n if n else 0.0
    firsts = [ts for ts in (a.first_ts, b.first_ts) if ts]
    latest = b if b.orders[-1:] > a.orders[-1:] else a  # the last order is the newer one's
    events = tuple(sorted(a.events + b.events)[-RECENT_EVENTS:])
    visit, away = _merged_visit(a, b)
    return Behaviour(
        first_ts=min(firsts, default=0),
        last_ts=max(a.last_ts, b.last_ts),
        events=events,
        orders=tuple(sorted(a.orders + b.orders)[-RECENT_ORDERS:]),
        failures=tuple(sorted(a.failures + b.failures)[-RECENT_FAILURES:]),
        devices=_merge_tokens(a.devices, b.devices),
        countries=_merge_tokens(a.countries, b.countries),
        cards=_merge_tokens(a.cards, b.cards),
        amount_n=n,
        amount_mean=mean,
        amount_m2=m2,
        price_n=a.price_n + b.price_n,
        price_sum=a.price_sum + b.price_sum,
        last_login=max(a.last_login, b.last_login),
        last_cart=max(a.last_cart, b.last_cart),
        order=latest.order,
        away=away,
        visit=visit,
        last_scored=max(a.last_scored, b.last_scored),
        lines=tuple(sorted(a.lines + b.lines)[-RECENT_LINES:]),
    )


def _merged_visit(a: Behaviour, b: Behaviour) -> tuple[int, int]:
    """The newest visit and the time away before it of both users' events as one user's.

    Each state knows events at its kept stamps and orders' further lines, at its visit's
    start and just before it (the time away), and one run without a gap from its visit's
    start to its last event (stamps and lines no longer kept included). Chained in time, the
    newest run begins after the newest gap over VISIT_GAP_MS: with one user's alone, a
    visitor merged into an account was "never away", and two halves of one visit began
    at the newer user's start. Without a gap, it begins at the earliest event known, after
    the time away its own state knew (the shorter, if both began there).
    """
    runs = [(ts, ts) for ts in (*a.events, *b.events, *a.lines, *b.lines)]
    for side in (a, b):
        if side.visit:
            runs.append((side.visit, side.last_ts))
            if side.away:
                runs.append((side.visit - side.away, side.visit - side.away))
        elif side.last_ts:  # an earlier state, its visit not known: its last event
            runs.append((side.last_ts, side.last_ts))
    if not runs:
        return 0, 0
    runs.sort()
    start, end = runs[0]
    away = -1
    for first, last in runs[1:]:
        if first - end > VISIT_GAP_MS:
            start, away = first, first - end
        end = max(end, last)
    if away < 0:
        away = min((s.away for s in (a, b) if s.visit == start and s.away), default=0)
    return start, away


def _merge_tokens(
    a: tuple[tuple[str, int, int], ...], b: tuple[tuple[str, int, int], ...]
) -> tuple[tuple[str, int, int], ...]:
    uses: dict[str, tuple[int, int]] = {}
    for value, first, last in (*a, *b):
        known = uses.get(value)
        uses[value] = (
            (first, last) if known is None else (min(first, known[0]), max(last, known[1]))
        )
    ordered = sorted(uses.items(), key=lambda item: (item[1][1], item[0]))
    return tuple((value, first, last) for value, (first, last) in ordered)[-KNOWN_TOKENS:]


# --- profile features, for segmentation --------------------------------------------------------


PROFILE_FEATURES: Final = (
    "recency_gap_days",
    "frequency",
    "monetary",
    "orders",
    "avg_order",
    "avg_price",
    "category_focus",
    *(f"share_{kind}" for kind in MIX_TYPES),
    *(f"taste_{i}" for i in range(VECTOR_PROJECTION_DIMS)),
)
_NO_TASTE: Final = (0.0,) * VECTOR_PROJECTION_DIMS


def profile_row(  # noqa: PLR0917 - positional: once per user and batch
    counts: Mapping[str, int],
    events: int,
    spend: float,
    orders: int,
    first_seen: int,
    last_seen: int,
    behaviour: Behaviour,
    category_focus: float,
    taste: Sequence[float] | None,
) -> tuple[float, ...]:
    """Recency, frequency, monetary value, event mix, price level, focus and taste, as
    floats in PROFILE_FEATURES order: a row of the segments' matrix, for every profile a
    batch updates (no dict per profile).

    `taste` is `vec_long` through `vector_projection` (None without a vector).
    """
    if taste is None:
        taste = _NO_TASTE
    elif len(taste) != VECTOR_PROJECTION_DIMS:
        raise ValueError(f"taste has {len(taste)} coordinates, not {VECTOR_PROJECTION_DIMS}")
    # Comparisons, not max(): a tenth of the cost.
    days = (last_seen - first_seen) / DAY_MS
    active_days = days if days > 1.0 else 1.0
    total = events if events > 1 else 1
    share = counts.get
    return (
        # The time away before the current visit: event time only, so it does not
        # depend on where batches split.
        math.log1p(behaviour.away / DAY_MS),
        math.log1p(events / active_days),
        math.log1p(spend),
        math.log1p(orders),
        math.log1p(spend / orders) if orders else 0.0,
        math.log1p(behaviour.price_sum / behaviour.price_n) if behaviour.price_n else 0.0,
        category_focus,
        # MIX_TYPES' shares, one by one: a comprehension cost a third of the whole row.
        share("view", 0) / total,
        share("click", 0) / total,
        share("search", 0) / total,
        share("add_to_cart", 0) / total,
        share("purchase", 0) / total,
        share("review", 0) / total,
        share("login", 0) / total,
        *taste,
    )


def vector_projection(dim: int, seed: int = 20_26) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A fixed random projection of unit vectors to VECTOR_PROJECTION_DIMS coordinates."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((VECTOR_PROJECTION_DIMS, dim))
    scale: np.ndarray[Any, np.dtype[np.float64]] = matrix / np.linalg.norm(matrix, axis=1)[:, None]
    return scale * math.sqrt(dim / VECTOR_PROJECTION_DIMS)  # unit-ish spread per coordinate
