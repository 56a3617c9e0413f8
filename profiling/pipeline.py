"""One consumer batch, end to end, without Kafka: records in, store written, messages out.

`apply_batch` is what a worker does between fetching a batch and committing its
offsets: decode and validate every record (rejections become dead letters),
group the valid events by user, load those users in one store round trip,
fold each user's events in (`fold_batch`), write every changed profile in one
round trip (`FoldedBatch.write`), and hand back the change messages to
publish. The caller publishes them and the dead letters, waits for the acks,
and only then commits (stream/worker.py), which folds its next batch between
the two halves while the write runs.

Writes are compare-and-set on the profile version. A user whose write lost a
race is reloaded and recomputed; its events are then usually found below the
watermark (another worker already applied them) and nothing is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Final, Protocol

import orjson

from profiling import slots
from profiling.errors import StoreConflictError
from profiling.events import (
    INTERNAL_ERROR,
    INVALID_JSON,
    KEY_MISMATCH,
    Event,
    Rejection,
    decode_event,
    forwarded_event,
)
from profiling.forwarding import ERASURES_KEPT, MAX_MERGE_HOPS, Lost, merge_holders
from profiling.interests import InterestModel
from profiling.messages import change_message, dead_letter
from profiling.models import ProfileModels
from profiling.profile import Delivery, Outcome, Profile, ProfileParams, apply_deliveries, evolve
from profiling.store import ProfileStore, Write

MAX_WRITE_ATTEMPTS = 3


class SourceRecord(Protocol):
    """The parts of a consumed Kafka record the pipeline reads (aiokafka's record fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed record as a plain value: for tests, benchmarks and replays without Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = -1  # Kafka's record time (ms); -1: none


def dead_letter_for(record: SourceRecord, rejection: Rejection, now_ms: int) -> bytes:
    """The dead letter of a refused record: the reason and the record itself, intact."""
    return dead_letter(
        rejection,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        now_ms=now_ms,
    )


@dataclass(slots=True)
class BatchResult:
    """What a batch produced: messages to publish and counts for metrics and logs."""

    changes: list[tuple[str, bytes]] = field(default_factory=list)  # (user_id, body)
    alerts: list[tuple[str, bytes]] = field(default_factory=list)  # (user_id, fraud alert body)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)  # (key, body)
    outcomes: Counter[str] = field(default_factory=Counter)  # applied / duplicate / replayed / ...
    erased: list[str] = field(default_factory=list)  # users erased: a tombstone each
    # Events of users merged into others, sent again under the user merged into:
    # (user_id, event JSON) for the events topic (`Outcome.forwarded`).
    forwarded: list[tuple[str, bytes]] = field(default_factory=list)
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)  # (command, outcome)
    by_type: Counter[str] = field(default_factory=Counter)  # applied events per type
    # Applied purchases per currency other than the base one (`profiling.currency`).
    foreign_purchases: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # dead letters per error code
    users_written: int = 0
    event_ts: list[int] = field(default_factory=list)  # ts of each applied event
    written_ms: int = 0  # when the batch's writes landed (the latest, for parts of one)
    labels: Counter[str] = field(default_factory=Counter)  # label records by outcome
    risk_scores: list[tuple[str, float]] = field(default_factory=list)  # (event_id, risk)
    model_drifts: int = 0  # drifts ADWIN detected in the risk scores
    segment_moves: int = 0
    refolded: set[str] = field(default_factory=set)  # users whose first write did not land
    # Users written whose change message the heartbeat held back: (source partition,
    # the time their last message was published); `held_back_changes` publishes it.
    held_back: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, other: BatchResult) -> None:
        """Fold `other`'s messages and counts into this result (parts of one batch)."""
        self.changes += other.changes
        self.alerts += other.alerts
        self.dead_letters += other.dead_letters
        self.erased += other.erased
        self.forwarded += other.forwarded
        self.commands.update(other.commands)
        self.outcomes.update(other.outcomes)
        self.by_type.update(other.by_type)
        self.foreign_purchases.update(other.foreign_purchases)
        self.errors.update(other.errors)
        self.users_written += other.users_written
        self.event_ts += other.event_ts
        self.written_ms = max(self.written_ms, other.written_ms)
        self.labels.update(other.labels)
        self.risk_scores += other.risk_scores
        self.model_drifts += other.model_drifts
        self.segment_moves += other.segment_moves
        self.refolded.update(other.refolded)
        self.held_back.update(other.held_back)


def decode_batch(
    records: Sequence[SourceRecord], now_ms: int, result: BatchResult
) -> dict[str, list[Delivery]]:
    """Validate every record; group the valid ones by user, dead-letter the rest."""
    by_user: dict[str, list[Delivery]] = {}
    for record in records:
        value = record.value
        verdict = decode_event(value, now_ms) if value is not None else _NO_VALUE
        if isinstance(verdict, Event):  # the usual record: grouped, then on to the next
            user_id = verdict.user_id
            if record.key == user_id.encode():
                delivery = _delivery((verdict, record.partition, record.offset))
                deliveries = by_user.get(user_id)
                if deliveries is None:  # not setdefault: that builds a list for every record
                    by_user[user_id] = [delivery]
                else:
                    deliveries.append(delivery)
                continue
            verdict = _KEY_MISMATCH
        result.dead_letters.append((record.key, dead_letter_for(record, verdict, now_ms)))
        result.errors[verdict.error] += 1
    return by_user


_NO_VALUE: Final = Rejection(INVALID_JSON, "record has no value (null)")
_KEY_MISMATCH: Final = Rejection(
    KEY_MISMATCH, "record key must be the event's user_id (UTF-8): it partitions users"
)
# Delivery(...) without the named tuple's Python-level __new__.
_delivery: Final = partial(tuple.__new__, Delivery)
# Write(...) without the frozen dataclass's __init__ (a third of the cost; one per user).
_write: Final = slots.builder(Write)


@dataclass(frozen=True, slots=True)
class Stages:
    """What a batch goes through besides the aggregates: vectors, models, what messages carry."""

    interests: InterestModel | None = None
    vector_in_updates: bool = False
    models: ProfileModels | None = None


async def apply_batch(
    records: Sequence[SourceRecord],
    store: ProfileStore,
    params: ProfileParams,
    clock: Callable[[], int],
    stages: Stages = Stages(),
) -> BatchResult:
    """Apply one consumer batch to the store; return what to publish."""
    folded = await fold_batch(records, store, params, clock, stages)
    return await folded.write()


async def fold_batch(
    records: Sequence[SourceRecord],
    store: ProfileStore,
    params: ProfileParams,
    clock: Callable[[], int],
    stages: Stages = Stages(),
    *,
    learn: bool = True,
) -> FoldedBatch:
    """A batch decoded, its users loaded and folded; `FoldedBatch.write` then writes it.

    `learn=False`: the models score and assign without learning, for a batch
    they learnt already (folded again after the write before it failed).

    Between the two, the store's profile cache holds the profiles of the
    previous batch's write even while that write is under way, so a worker
    folds the next batch as Redis runs the last one's write (see
    `FoldedBatch.write` for what keeps that safe).
    """
    result = BatchResult()
    by_user = decode_batch(records, clock(), result)
    batch = FoldedBatch(by_user, result, store, params, clock, stages, records)
    if by_user:
        batch.writes = batch.keeping_dead_letters(
            await _fold_users(by_user, store, params, clock(), result, stages=stages, learn=learn)
        )
    return batch


@dataclass
class FoldedBatch:
    """A folded batch whose writes are not yet confirmed (from `fold_batch`)."""

    by_user: dict[str, list[Delivery]]
    result: BatchResult
    store: ProfileStore
    params: ProfileParams
    clock: Callable[[], int]
    stages: Stages
    records: Sequence[SourceRecord] = ()  # the batch's, for dead letters after the fold
    writes: list[tuple[Outcome, Write | None]] | None = None  # the fold's, until first sent
    refold: dict[str, list[Delivery]] = field(default_factory=dict)  # users to fold again

    async def write(self, *, stale: AbstractSet[str] = frozenset()) -> BatchResult:
        """Write the folded profiles; fold again (from the store) the users whose write lost.

        `stale`: users whose write of an earlier batch did not land as folded
        (`BatchResult.refolded`). This batch may have folded them from the
        profile that write held, so they are folded again from the store
        before anything of theirs is sent. Safe to call again after it raised:
        a write that may have landed is folded again from the store, where its
        events are then replays.
        """
        result = self.result
        if self.writes is not None:
            first, self.writes = self.writes, None
            # Usually no user is stale: the fold's list then goes as it is, unread.
            sent = [(o, w) for o, w in first if o.profile.user_id not in stale] if stale else first
            self.refold = {u: self.by_user[u] for u in stale if u in self.by_user}
            try:
                lost = await self._write_once(sent)
            except BaseException:
                self.refold = {o.profile.user_id: self.by_user[o.profile.user_id] for o, _ in first}
                result.refolded.update(self.refold)
                raise
            result.written_ms = self.clock()
            self.refold.update((user, self.by_user[user]) for user in lost)
            result.refolded.update(self.refold)
        for _attempt in range(1, MAX_WRITE_ATTEMPTS):
            if not self.refold:
                return result
            writes = self.keeping_dead_letters(await _fold_users(
                self.refold, self.store, self.params, self.clock(), result, stages=self.stages,
                learn=False,  # the first fold taught the models these events
                observe=False,  # and counted their scores and moves
            ))  # fmt: skip
            lost = await self._write_once(writes)
            result.written_ms = self.clock()
            self.refold = {user: self.by_user[user] for user in lost}
            result.refolded.update(self.refold)
        if self.refold:
            raise StoreConflictError(f"{len(self.refold)} users still conflicting after retries")
        return result

    async def _write_once(self, folded: Sequence[tuple[Outcome, Write | None]]) -> set[str]:
        """`_write_users` of this batch's users: the ones whose write lost."""
        lost = await _write_users(
            folded, self.store, self.result, self.stages, self.by_user,
            base_currency=self.params.currencies.base,
        )  # fmt: skip
        for outcome, write in folded:
            # A write's own are in its profile (`keeping_dead_letters`), sent by `_record`.
            # (`write` tested first: most users have one, and an `Outcome` field costs more.)
            if write is None and outcome.stranded and outcome.profile.user_id not in lost:
                letters = self._stranded_letters(outcome)
                self.result.dead_letters += letters
                self.result.errors[INTERNAL_ERROR] += len(letters)
        return lost

    def keeping_dead_letters(
        self, folded: list[tuple[Outcome, Write | None]]
    ) -> list[tuple[Outcome, Write | None]]:
        """`folded`, each write that dead-letters events (`Outcome.stranded`) with those
        dead letters in its profile (`Profile.dead_letters`).

        The write moves the user's watermark past those events: a crash after it
        and before the dead letters' acks replays the batch, which finds them
        below the watermark and would never dead-letter them again. Kept in the
        profile, they go out once it lands and again with every replay of it, as
        its forwards do (`_record`).
        """
        if not any(o.stranded for o, w in folded if w is not None):
            return folded  # the usual batch: nothing to keep
        return [
            self._keeping(outcome, write) if outcome.stranded and write is not None
            else (outcome, write)
            for outcome, write in folded
        ]  # fmt: skip

    def _keeping(self, outcome: Outcome, write: Write) -> tuple[Outcome, Write]:
        letters = tuple(
            (key.decode(), body.decode())
            for key, body in self._stranded_letters(outcome)
            if key is not None  # a valid event's record is keyed by its user
        )
        profile = evolve(outcome.profile, dead_letters=outcome.profile.dead_letters + letters)
        return outcome._replace(profile=profile), replace(write, profile=profile)

    def _stranded_letters(self, outcome: Outcome) -> list[tuple[bytes | None, bytes]]:
        """Dead letters of the events whose holder is not known: the record itself, so
        that it can be applied by hand, never dropped unsaid, saying why (`Lost`)."""
        records = {(r.partition, r.offset): r for r in self.records}
        now = self.clock()
        letters: list[tuple[bytes | None, bytes]] = []
        for (event, partition, offset), why in outcome.stranded:
            record = records.get((partition, offset))
            if record is None:  # not this batch's (a caller that passed no records)
                continue
            rejection = Rejection(INTERNAL_ERROR, _stranded_detail(event, why))
            letters.append((record.key, dead_letter_for(record, rejection, now)))
        return letters


def _stranded_detail(event: Event, why: Lost) -> str:
    """What a dead letter of an event older than a merge, whose holder is not known, says."""
    origin = event.forwarded_from or event.user_id
    if why is Lost.OLDER_THAN_KEPT:
        return (
            f"older than every erasure that the marker of {origin!r}, or of a user its "
            f"events were merged into, keeps (a user's last {ERASURES_KEPT + 1}): which "
            "erasure took it, and so the user holding it, is not known"
        )
    return (
        f"older than the merge of {origin!r}, whose events moved on through more than "
        f"{MAX_MERGE_HOPS} merges: the user holding them was not looked for further"
    )


async def _fold_users(
    by_user: dict[str, list[Delivery]],
    store: ProfileStore,
    params: ProfileParams,
    now_ms: int,
    result: BatchResult,
    *,
    stages: Stages,
    learn: bool = True,
    observe: bool = True,
) -> list[tuple[Outcome, Write | None]]:
    """Load and fold these users; each outcome with the write it needs (None: none).

    `learn`: whether the models learn from the events (not when folding them again).
    `observe`: whether the models' scores, drifts and moves go into `result` (not when
    a write folds users again: the batch's first fold counted them, and a metric would
    count each scored event once per attempt).
    """
    loaded = await store.load(list(by_user), fold=True)
    holders = await merge_holders(loaded, by_user, store)
    outcomes = [
        apply_deliveries(loaded[user], deliveries, params, now_ms, holders)
        for user, deliveries in by_user.items()
    ]
    if stages.interests is not None:
        outcomes = await stages.interests.update(outcomes, now_ms)
    if stages.models is not None:
        outcomes = stages.models.update(outcomes, now_ms, learn=learn)
        scores, drifts, moves = stages.models.observations()
        if observe:
            result.risk_scores += scores
            result.model_drifts += drifts
            result.segment_moves += moves
    folded: list[tuple[Outcome, Write | None]] = []
    for o in outcomes:
        write = None
        if o.applied:  # `o.wrote`
            profile = o.profile
            base = loaded[profile.user_id]
            write = _write(profile, base.version, o.scored, base.updated, False)
        folded.append((o, write))
    return folded


async def _write_users(
    folded: Sequence[tuple[Outcome, Write | None]],
    store: ProfileStore,
    result: BatchResult,
    stages: Stages,
    by_user: dict[str, list[Delivery]],
    *,
    base_currency: str,
) -> set[str]:
    """Write the folded users once; record the ones written, return the ones whose write lost."""
    conflicts = set(await store.save([w for _, w in folded if w is not None]))
    if len(conflicts) < len(folded):
        # Counted by every landed user, most often 0: made here, in the order the
        # first `_record` would make them, so `_record` adds only counts above 0.
        for kind in _COUNTED_BY_EVERY_USER:
            result.outcomes.setdefault(kind, 0)
    for outcome, _ in folded:
        user_id = outcome.profile.user_id
        if user_id not in conflicts:
            _record(outcome, result, stages, by_user[user_id][-1].partition, base_currency)
    return conflicts


# The outcomes `_record` counts for every landed user, in the order it first did.
_COUNTED_BY_EVERY_USER: Final = ("applied", "duplicate", "replayed")


def _record(  # noqa: PLR0912 - one pass per landed user, kept flat: hot path
    outcome: Outcome, result: BatchResult, stages: Stages, partition: int, base_currency: str
) -> None:
    """Count what a landed write applied and collect what it sends.

    Purchases in another currency than `base_currency` are counted as applied
    (`BatchResult.foreign_purchases`), not as decoded: a replay, a duplicate or
    an event forwarded to the account it was merged into is no purchase again.
    """
    # One unpacking, not a read per field: a named tuple's field is a generic attribute
    # lookup (about 200 instructions, against 90 a field unpacked).
    profile, applied, duplicates, replayed, changed, publish, _, suppressed, forwarded, _ = outcome
    wrote = bool(applied)  # `Outcome.wrote`, once: a property call each time
    outcomes = result.outcomes
    if wrote:  # each key there already (`_write_users`)
        outcomes["applied"] += len(applied)
    if duplicates:
        outcomes["duplicate"] += duplicates
    if replayed:
        outcomes["replayed"] += replayed
    if suppressed:
        outcomes["suppressed"] += suppressed
    # Published with nothing written: a replay, whose last two writes' acks may be lost.
    replay = publish and not wrote
    if wrote or replay:  # a write's own forwards and dead letters; a replay's again
        kept = profile.forwards_before + profile.forwards if replay else profile.forwards
        if kept:
            result.forwarded += [(user, body.encode()) for user, body in kept]
        letters = (
            profile.dead_letters_before + profile.dead_letters if replay else profile.dead_letters
        )
        if letters:
            result.dead_letters += [(key.encode(), body.encode()) for key, body in letters]
            result.errors.update(orjson.loads(body)["error"] for _, body in letters)
    if forwarded:
        outcomes["forwarded"] += len(forwarded)
        if not wrote:  # else kept in the profile's `forwards`, sent above
            result.forwarded += [(to, forwarded_event(e, to)) for to, e in forwarded]
    by_type, event_ts = result.by_type, result.event_ts
    for event in applied:
        by_type[event.type] += 1
        event_ts.append(event.ts)
        if event.type == "purchase" and event.currency != base_currency:
            result.foreign_purchases[event.currency] += 1
    if wrote:
        result.users_written += 1
    if publish:
        result.changes.append((profile.user_id, _change_message(profile, changed, stages)))
    elif wrote:
        result.held_back[profile.user_id] = (partition, profile.published_at)
    if wrote or replay:  # a replay sends the last writes' alerts again
        alerts = profile.alerts_before + profile.alerts if replay else profile.alerts
        if alerts:
            result.alerts += alert_messages(alerts)


def alert_messages(alerts: Sequence[str]) -> list[tuple[str, bytes]]:
    """(user_id, body) of each alert body a profile keeps, for the alerts topic.

    Keyed by the alert's own user, not the profile's: a merged visitor's alerts
    go out again with the merge and the account's replays (`profiling.merging`),
    under the visitor's key.
    """
    return [(orjson.loads(alert)["user_id"], alert.encode()) for alert in alerts]


def _change_message(profile: Profile, changed: AbstractSet[str], stages: Stages) -> bytes:
    threshold = stages.models.alert_threshold if stages.models else 0.8
    return change_message(profile, changed, stages.vector_in_updates, threshold)


@dataclass(slots=True)
class HeldBack:
    """Change messages the heartbeat held back, now due; `writes` record them as published."""

    changes: list[tuple[str, bytes]] = field(default_factory=list)  # (user_id, body)
    writes: list[Write] = field(default_factory=list)

    def landed(self, refused: Collection[str]) -> list[tuple[str, bytes]]:
        """The changes to publish once `writes` are saved: those of users not `refused`."""
        return [(user_id, body) for user_id, body in self.changes if user_id not in refused]


async def held_back_changes(
    user_ids: Sequence[str],
    store: ProfileStore,
    params: ProfileParams,
    now_ms: int,
    stages: Stages,
    *,
    handing_off: bool = False,
    again: bool = False,
) -> HeldBack:
    """The change messages of users whose last writes the heartbeat held back.

    A write that changed only counters publishes nothing until the heartbeat
    has passed since the user's last message (`apply_deliveries`); a user who
    then sends no more events would keep those changes unpublished. So the
    worker remembers such users (`BatchResult.held_back`) and, once the
    heartbeat has passed, publishes their profile as it stands, with every
    field changed since their last message. `handing_off`: publish them now,
    heartbeat or not, because the worker is letting their partition go (a
    rebalance or a shutdown) and the next owner does not know they wait.
    `again`: users another worker held back (read from the held-back ledger),
    published as they stand even when marked published already: that worker
    may have died between its mark and its message, and a repeat is harmless
    where a lost message is not.

    The profiles are read from the store itself, not from what this process
    last wrote: another worker may have erased the user (a merge runs on the
    worker of the user merged into) or, after a rebalance, written them.
    Save `writes` first, then publish the `changes` of the users whose write
    landed (`HeldBack.landed`): each write marks its profile as published (its
    TTL kept: publishing is no activity of the user's),
    compare-and-set on the version it was read at, so no message goes out for
    a user erased or written meanwhile (that write publishes or holds back
    their changes itself). A crash between the two leaves the message unsent
    until the partition's next owner finds the user in the held-back ledger
    and publishes it `again`.
    """
    held = HeldBack()
    loaded = await store.load(list(user_ids), cached=False)
    for user_id in user_ids:
        profile = loaded[user_id]
        if profile.is_new:
            continue  # erased since
        if not again:  # else marked published maybe, its message never sent
            if profile.published_version == profile.version:
                continue  # published by a later write
            if not handing_off and now_ms - profile.published_at < params.heartbeat_ms:
                continue  # published meanwhile (another worker's write); due later
        marked = evolve(profile, published_at=now_ms, published_version=profile.version)
        held.changes.append((user_id, _change_message(marked, marked.unpublished, stages)))
        held.writes.append(Write(marked, profile.version, (), profile.updated, keep_ttl=True))
    return held
