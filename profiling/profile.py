"""Per-user profile state and the pure function that folds events into it.

`apply_deliveries` is the whole of the aggregate semantics (DESIGN.md §3, §4):
it takes a user's stored profile (its dedupe window included) and the batch's
deliveries for that user, and returns a new profile plus what happened to each
delivery. It never mutates its inputs and reads no clock; the caller passes
`now_ms`.

Category affinity is an exponentially decayed sum in *event* time, kept at the
reference time `last_seen`: an event at `ts` adds `w * 2**(-(last_seen - ts)/h)`,
and moving `last_seen` forward scales every score by the same factor. The sum
does not depend on arrival order or batch split, so a replay of the same log
gives the same profile however it was batched (up to float rounding, and up to
which categories the bounded table evicted).
"""

from __future__ import annotations

import hashlib
import heapq
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final, NamedTuple

from profiling import slots
from profiling.behaviour import Behaviour
from profiling.currency import SAME_CURRENCY, Currencies
from profiling.events import EVENT_TYPES, Event, forwarded_event
from profiling.forwarding import Erased, Lost, Routes, holder_of, origin_of
from profiling.rounding import round6, round6_positive
from profiling.vectors import StoredInterest

MS_PER_DAY: Final = 86_400_000
PUBLISHED_CATEGORIES: Final = 10

# How much one event of each type says about a user's interest in its category.
DEFAULT_CATEGORY_WEIGHTS: Final[Mapping[str, float]] = {
    "view": 1.0,
    "click": 1.5,
    "search": 1.0,
    "add_to_cart": 3.0,
    "remove_from_cart": 0.0,
    "purchase": 5.0,
    "review": 2.0,
    "login": 0.0,
}


class Delivery(NamedTuple):
    """An event with the log position it came from (the source partition and offset)."""

    event: Event
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ProfileParams:
    """The knobs of the aggregate semantics, as plain values."""

    category_half_life_ms: float = 14 * MS_PER_DAY
    category_slots: int = 64
    category_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_CATEGORY_WEIGHTS)
    )
    heartbeat_ms: int = 60_000
    dedupe_window: int = 2048  # event ids remembered per user
    currencies: Currencies = SAME_CURRENCY  # what spend counts in


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything stored for one user. Public fields are what readers see in Redis."""

    user_id: str
    version: int = 0
    first_seen: int = 0
    last_seen: int = 0
    updated: int = 0
    events: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    spend: float = 0.0
    orders: int = 0
    # Internal bookkeeping.
    category_scores: Mapping[str, float] = field(default_factory=dict)  # decayed to last_seen
    watermarks: Mapping[int, int] = field(default_factory=dict)  # partition -> last offset applied
    published_at: int = 0  # clock ms of the last change message
    published_version: int = 0  # version that message carried
    # Fields changed since the last message, or carried by it if the last write published.
    unpublished: frozenset[str] = frozenset()
    # The dedupe window: `event_digest` of the last applied event ids, oldest first.
    seen: bytes = b""
    # Interest vectors (profiling.interests), when an encoder runs.
    interest: StoredInterest | None = None
    model: str | None = None
    # Segments and risk (profiling.models), when the models run.
    behaviour: Behaviour | None = None  # bounded state behind the risk and segment features
    segment: int | None = None
    prev_segment: int | None = None  # the segment before the last move
    segment_dwell: int = 0  # updates spent in `segment`
    risk: float | None = None  # of the latest purchase or login
    risk_reasons: str | None = None  # JSON [{feature, contribution, detail}]
    alerts: tuple[str, ...] = ()  # alert bodies raised by the write of this version
    # (user_id, event JSON) that write forwarded (`Outcome.forwarded`): like its alerts,
    # sent again when a replay finds those events below the watermark.
    forwards: tuple[tuple[str, str], ...] = ()
    # The write before's alerts and forwards. A worker writes a batch while the one
    # before it still waits for its acks: a crash then replays both writes at once.
    alerts_before: tuple[str, ...] = ()
    forwards_before: tuple[tuple[str, str], ...] = ()
    # (key, dead letter JSON) of the events this write dead-lettered past its watermark
    # (`Outcome.stranded`), and the write before's: like its forwards, a replay finds
    # those events below the watermark, so it sends these again, never the event's
    # fate unsaid when the crash came before the dead letter's ack.
    dead_letters: tuple[tuple[str, str], ...] = ()
    dead_letters_before: tuple[tuple[str, str], ...] = ()
    # The user was erased at this time (epoch ms, `profile-commands`): events older
    # than it are suppressed, never applied (DESIGN.md §9). 0: never erased.
    erased_before: int = 0
    # With `erased_before`, when the erasure was a merge: the user merged into. Events
    # older than the merge are forwarded instead, to that user or to whoever holds its
    # profile since (`profiling.forwarding`).
    merged_into: str | None = None
    # The user's erasures before `erased_before`, oldest first, the last
    # `forwarding.ERASURES_KEPT`: (time, user merged into or None). An event older
    # than one of them went with it, not with the last (`forwarding.Marker.after`).
    erased_earlier: tuple[Erased, ...] = ()
    # `merging.merge_marker` digests of the last merges folded into this profile, oldest
    # first: a replayed merge is found here once its entry has left the dedupe window.
    merges: bytes = b""

    @property
    def is_new(self) -> bool:
        return self.version == 0

    def top_categories(self, n: int = PUBLISHED_CATEGORIES) -> list[tuple[str, float]]:
        """The `n` highest category scores above 0 (ties: the later name first), `round6`ed."""
        scores = self.category_scores
        size = len(scores)
        best: Iterable[tuple[str, float]]
        if size > n:
            best = heapq.nlargest(n, scores.items(), key=SCORE_THEN_NAME)
        elif size > 2:
            # `list.sort`, not `sorted`: no keywords passed on to it.
            best = list(scores.items())
            best.sort(key=SCORE_THEN_NAME, reverse=True)
        elif size == 2:  # as often as three or more: one comparison, not a sort
            first, second = scores.items()
            if second[1] > first[1] or (second[1] == first[1] and second[0] > first[0]):
                best = (second, first)
            else:
                best = (first, second)
        else:  # the usual one category, or none: nothing to order
            best = scores.items()
        return round6_positive(best)


SCORE_THEN_NAME: Final = operator.itemgetter(1, 0)  # (name, score) pairs: by score, ties by name
BY_TS: Final = operator.attrgetter("ts")
# The changed-field name of each event type's count, built once: a lookup per event
# instead of an f-string.
COUNT_FIELDS: Final[Mapping[str, str]] = {kind: f"count:{kind}" for kind in EVENT_TYPES}
_replace: Final = slots.replacer(Profile)
# What folding a batch's events sets, every time (`apply_deliveries`).
_fold_in: Final = slots.replacer_of(
    Profile,
    ("version", "first_seen", "last_seen", "updated", "events", "counts", "spend", "orders",
     "category_scores", "watermarks", "unpublished", "seen", "alerts", "forwards",
     "alerts_before", "forwards_before", "dead_letters", "dead_letters_before", "published_at",
     "published_version"),
)  # fmt: skip


def evolve(profile: Profile, **changes: object) -> Profile:
    """`dataclasses.replace` for the hot path: a copy with `changes`, at a third to half the cost.

    Sets the slots directly instead of calling the frozen `__init__` with every
    field; `changes` must name fields (a typo raises TypeError).
    """
    return _replace(profile, **changes)


class Outcome(NamedTuple):
    """What applying one user's deliveries did (a tuple: made twice per user and batch)."""

    profile: Profile
    applied: list[Event]
    duplicates: int
    replayed: int
    changed: frozenset[str]  # what the change message reports, when there is one
    publish: bool
    scored: tuple[tuple[str, bytes], ...] = ()  # (event_id, kept features) for labels
    suppressed: int = 0  # events older than the user's erasure, dropped
    # Events older than a merge, each with the user holding that merge's events now.
    forwarded: tuple[tuple[str, Event], ...] = ()
    # Events older than a merge whose holder is not known, each with why (`Lost`).
    stranded: tuple[tuple[Delivery, Lost], ...] = ()

    @property
    def wrote(self) -> bool:
        return bool(self.applied)


# Outcome(...) with every field, without the named tuple's Python-level __new__ (made
# twice per user and batch).
make_outcome: Final = partial(tuple.__new__, Outcome)
NOTHING_FORWARDED: Final[tuple[tuple[str, Event], ...]] = ()
NOTHING_STRANDED: Final[tuple[tuple[Delivery, Lost], ...]] = ()
NO_HOLDERS: Final[Mapping[str, Routes]] = {}
NO_ALERTS: Final[tuple[str, ...]] = ()
NOTHING_KEPT: Final[tuple[tuple[str, str], ...]] = ()
NOTHING_CHANGED: Final[frozenset[str]] = frozenset()


def apply_deliveries(
    profile: Profile,
    deliveries: Sequence[Delivery],
    params: ProfileParams,
    now_ms: int,
    holders: Mapping[str, Routes] = NO_HOLDERS,
) -> Outcome:
    """Fold a batch's deliveries for one user into `profile`; pure.

    `holders`: for the events older than the user's erasure, per origin, the users
    holding its events now, by the events' time (`profiling.forwarding.merge_holders`).
    Without them, a merged user's own event goes to `merged_into` and a forwarded one
    is suppressed.
    """
    fresh, digests, duplicates, replayed, passed_on, watermarks = _select_fresh(profile, deliveries)
    suppressed, forwarded, stranded = 0, NOTHING_FORWARDED, NOTHING_STRANDED
    if passed_on:
        kept, forwarded, stranded = _route(profile, passed_on, holders)
        suppressed = len(passed_on) - len(kept) - len(forwarded) - len(stranded)
        duplicates += _take_kept(profile.seen, kept, fresh, digests)
    # A replay of a batch whose write landed but whose change message and alerts may
    # not have been acked (a crash or a rebalance before the commit): publish the
    # user's state again, with what that message carried and that write's alerts,
    # also when the fetch brought newer events too (readers keep the highest
    # version they saw and alert ids repeat, so a repeat is harmless).
    is_new = profile.version == 0  # `profile.is_new`, once: a property call each time
    replay = replayed > 0 and not is_new
    if not fresh:
        return make_outcome((
            profile, [], duplicates, replayed, profile.unpublished, replay, (), suppressed,
            forwarded, stranded,
        ))  # fmt: skip
    if replay:  # the replayed writes' alerts, forwards, dead letters go out again with this one's
        alerts = profile.alerts_before + profile.alerts
        forwards = profile.forwards_before + profile.forwards
        letters = profile.dead_letters_before + profile.dead_letters
        alerts_before, forwards_before, letters_before = NO_ALERTS, NOTHING_KEPT, NOTHING_KEPT
    else:
        alerts, forwards, letters = NO_ALERTS, NOTHING_KEPT, NOTHING_KEPT
        alerts_before, forwards_before = profile.alerts, profile.forwards
        letters_before = profile.dead_letters
    if forwarded:
        forwards += tuple((to, forwarded_event(event, to).decode()) for to, event in forwarded)
    if len(fresh) > 1:  # a sort with a key calls it even for one event
        fresh.sort(key=BY_TS)
    counts = dict(profile.counts)
    spend, orders = profile.spend, profile.orders
    changed = {"events", "version", "updated"}
    for event in fresh:
        counts[event.type] = counts.get(event.type, 0) + 1
        changed.add(COUNT_FIELDS[event.type])
        if event.type == "purchase":
            orders += 1
            changed.add("orders")
            amount = params.currencies.value(event.amount, event.currency)
            if amount is not None:  # None: a currency without a rate
                # Counted to the millionth, as stored: the sum then does not depend on
                # how the log was batched (the stored spend is rounded after each batch).
                spend += round6(amount)
                changed.add("spend")
    # Comparisons, not min() and max(): a tenth of the cost.
    first, last = fresh[0].ts, fresh[-1].ts
    first_seen = first if is_new or first < profile.first_seen else profile.first_seen
    last_seen = last if last > profile.last_seen else profile.last_seen
    scores = decay_categories(profile.category_scores, profile.last_seen, fresh, last_seen, params)
    if scores != profile.category_scores:
        changed.add("categories")
    if first_seen != profile.first_seen:
        changed.add("first_seen")
    if last_seen != profile.last_seen:
        changed.add("last_seen")
    # Fields changed since the last published message; when the last write was itself
    # published, the fields that message carried (so a republish can repeat them).
    carried = (
        profile.unpublished
        if replay or profile.published_version != profile.version
        else NOTHING_CHANGED
    )
    all_changed = carried | changed
    publish = replay or is_new or now_ms - profile.published_at >= params.heartbeat_ms
    version = profile.version + 1
    # By position, in `_fold_in`'s order: twenty keywords cost twice the copy itself.
    updated = _fold_in(
        profile,
        version,
        first_seen,
        last_seen,
        now_ms,  # updated
        profile.events + len(fresh),  # events
        counts,
        round6(spend),  # spend, as stored: a reload gives back the same profile
        orders,
        scores,  # category_scores
        watermarks,
        all_changed,  # unpublished
        (profile.seen + b"".join(digests))[-DIGEST_BYTES * params.dedupe_window :],  # seen
        alerts,  # the models add this batch's
        forwards,
        alerts_before,
        forwards_before,
        letters,  # dead_letters: the batch adds this write's (`pipeline.FoldedBatch`)
        letters_before,  # dead_letters_before
        # published_at, published_version: a change message is due, the profile records
        # what it publishes.
        now_ms if publish else profile.published_at,
        version if publish else profile.published_version,
    )
    return make_outcome((
        updated, fresh, duplicates, replayed, all_changed, publish, (), suppressed, forwarded,
        stranded,
    ))  # fmt: skip


def _route(
    profile: Profile, older: Sequence[Delivery], holders: Mapping[str, Routes]
) -> tuple[list[Event], tuple[tuple[str, Event], ...], tuple[tuple[Delivery, Lost], ...]]:
    """Events older than the user's erasure: those the user holds itself (a merge came
    back to it), those for another holder, and those whose holder is not known (with why). The
    rest are suppressed: older than a plain erase, or than the holder's."""
    kept: list[Event] = []
    forwarded: list[tuple[str, Event]] = []
    stranded: list[tuple[Delivery, Lost]] = []
    for delivery in older:
        event = delivery.event
        origin = origin_of(profile, event.forwarded_from)
        if origin is None:
            continue
        # Not walked (a caller without a store): the user's own event goes one merge on.
        unwalked = Lost.ERASED if event.forwarded_from else profile.merged_into or Lost.ERASED
        routes = holders.get(origin)
        holder = unwalked if routes is None else holder_of(routes, event.ts)
        if holder == profile.user_id:
            kept.append(event)
        elif isinstance(holder, str):
            forwarded.append((holder, event))
        elif holder is not Lost.ERASED:
            stranded.append((delivery, holder))
    return kept, tuple(forwarded), tuple(stranded)


def _take_kept(seen: bytes, kept: Sequence[Event], fresh: list[Event], digests: list[bytes]) -> int:
    """Add the events a merge brought back to the user to `fresh` (and their ids'
    digests to `digests`), but for known ids: the number of those duplicates."""
    if not kept:
        return 0
    batch, duplicates = set(digests), 0
    for event in kept:
        digest = event_digest(event.event_id)
        if digest in batch or in_window(seen, digest):
            duplicates += 1
            continue
        batch.add(digest)
        digests.append(digest)
        fresh.append(event)
    return duplicates


def _select_fresh(
    profile: Profile, deliveries: Sequence[Delivery]
) -> tuple[list[Event], list[bytes], int, int, list[Delivery], dict[int, int]]:
    """Drop deliveries at or below the partition watermark (replays), events older than
    the user's erasure, and known event ids.

    Returns the fresh events, their ids' digests (in delivery order), the
    number of duplicates and replays, the events older than the erasure
    (suppressed, or forwarded after a merge), and the advanced watermarks.
    """
    watermarks = dict(profile.watermarks)
    seen = profile.seen
    erased_before = profile.erased_before
    digests: list[bytes] = []
    batch: set[bytes] = set()
    fresh: list[Event] = []
    older: list[Delivery] = []
    duplicates = replayed = 0
    for event, partition, offset in deliveries:
        if offset <= profile.watermarks.get(partition, -1):
            replayed += 1
            continue
        if offset > watermarks.get(partition, -1):
            watermarks[partition] = offset
        if event.ts < erased_before:
            older.append(Delivery(event, partition, offset))
            continue
        # `event_digest` and `in_window`, inline (a call each per event saved): most ids
        # are nowhere in the window, which `find` tells in C.
        hashed = _EMPTY_DIGEST.copy()
        hashed.update(event.event_id.encode())
        digest = hashed.digest()
        if digest in batch or (seen.find(digest) >= 0 and in_window(seen, digest)):
            duplicates += 1
            continue
        batch.add(digest)
        digests.append(digest)
        fresh.append(event)
    return fresh, digests, duplicates, replayed, older, watermarks


DIGEST_BYTES: Final = 8
# The hash before any input: a copy of it, then `update`, gives the digest
# `blake2b(data, digest_size=DIGEST_BYTES)` gives, without its keyword arguments
# parsed per event (a sixth of the cost).
_EMPTY_DIGEST: Final = hashlib.blake2b(digest_size=DIGEST_BYTES)


def event_digest(event_id: str) -> bytes:
    """The dedupe window's entry for an event id: 8 bytes of its BLAKE2b digest.

    Two distinct ids share a digest with probability 2^-64; with 2,048 ids in a
    window, a fresh event is mistaken for a re-send about once in 10^16 events.
    """
    hashed = _EMPTY_DIGEST.copy()
    hashed.update(event_id.encode())
    return hashed.digest()


def in_window(seen: bytes, digest: bytes) -> bool:
    """Whether `digest` is one of the 8-byte entries of the window `seen`.

    `bytes.find` scans in C; a match must also start on an entry boundary (the
    digest may occur straddling two entries).
    """
    at = seen.find(digest)
    while at >= 0:
        if at % DIGEST_BYTES == 0:
            return True
        at = seen.find(digest, at + 1)
    return False


def decay_categories(
    scores: Mapping[str, float],
    reference_ms: int,
    events: Sequence[Event],
    new_reference_ms: int,
    params: ProfileParams,
) -> Mapping[str, float]:
    """Decayed category affinity at `new_reference_ms`, bounded to the strongest slots.

    `scores` itself when nothing moves them: no weighted event with a category
    and the same reference time (the store then leaves the published
    categories alone).
    """
    weights = params.category_weights
    half_life = params.category_half_life_ms
    # Exponents as (earlier - later) / half_life: the same floats as -(later - earlier) /
    # half_life (the differences are exact integers), without a negation each.
    shift = 2.0 ** ((reference_ms - new_reference_ms) / half_life)
    # The decayed scores first, then the events' gains: a user's few categories and
    # events, in plain loops (faster than a comprehension, or than a call).
    result: dict[str, float] = {}
    for known, score in scores.items():
        result[known] = score * shift
    moved = new_reference_ms != reference_ms
    for event in events:
        name = event.category
        weight = weights.get(event.type, 0.0)
        if not name or weight == 0.0:
            continue
        gain = weight * 2.0 ** ((event.ts - new_reference_ms) / half_life)
        result[name] = result.get(name, 0.0) + gain
        moved = True
    if not moved:
        return scores
    if len(result) > params.category_slots:
        kept = heapq.nlargest(params.category_slots, result.items(), key=SCORE_THEN_NAME)
        result = dict(kept)
    return result
