"""The high-volume event path: batches from Kafka, through the engine, into Redis.

The order of one batch, and why it is safe to crash anywhere in it:

1. `getmany` up to `batch_max_events` records or `batch_max_ms` of waiting
   (the consumer then fetches again only when step 3 starts writing: see
   `BatchWorker.run`);
2. `fold_batch` validates, de-duplicates and folds every user's events into
   their profile (and the models);
3. `FoldedBatch.write` writes every changed profile to Redis in one round trip
   (compare-and-set per user, watermark inside);
4. dead letters and profile changes are sent, and every producer ack awaited;
   the users whose change message the heartbeat held back are saved to the
   held-back ledger (`stream.held_back`);
5. only then are the batch's offsets committed.

Steps 3 to 5 of one batch overlap with steps 1 and 2 of the next: the next
batch is folded while Redis runs this one's write (from the profiles that write
carries, which the store's cache holds), and a worker would otherwise sit idle
on acks and commit round trips. Writes are sent one at a time, in order, and a
user whose write did not land as folded is folded again by the next batch too;
commits stay in order.

A crash before 5 replays the batch: events at or below a user's watermark are
skipped, change messages of writes that landed are published again (readers
drop repeats by `version`), dead letters may repeat (those of events a landed
write moved its watermark past are kept in the profile and sent again). Nothing valid is lost and
no profile changes twice. A commit refused after a rebalance is counted and
ignored for the same reason: the partition's new owner replays idempotently.
Labels are learnt by the models, which are snapshotted less often than offsets
are committed: a worker reads each labels partition from its models' own
offsets (`labels_positions`), so labels committed after the last snapshot are
learnt again rather than lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from typing import Final, NamedTuple, TypeVar

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    BrokerNotAvailableError,
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    UnknownTopicOrPartitionError,
)
from redis.exceptions import (
    ClusterCrossSlotError,
    DataError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from profiling.commands import CommandRecord, apply_commands
from profiling.currency import AS_SENT, CONVERTED
from profiling.embedding_cache import LookupTotals
from profiling.errors import ProfilerError
from profiling.events import INTERNAL_ERROR, Rejection
from profiling.labels import apply_labels
from profiling.models import ProfileModels
from profiling.pipeline import (
    BatchResult,
    FoldedBatch,
    SourceRecord,
    Stages,
    apply_batch,
    dead_letter_for,
    fold_batch,
    held_back_changes,
)
from profiling.profile import MS_PER_DAY, ProfileParams
from stream import kafka, metrics
from stream.held_back import HeldBackIndex, HeldBackLedger, Taken
from stream.interest_setup import interest_model
from stream.model_setup import build_models, restore_models, save_models
from stream.redis_store import RedisProfileStore, compact_hash_limit, connect
from stream.settings import Settings

log = logging.getLogger("profiler.worker")

T = TypeVar("T")
MAX_BACKOFF_S = 5.0
# Event-loop turns from resuming the consumer's partitions to its fetch request
# being on the wire: three with aiokafka 0.14. Should it need more, the request
# only goes out later, once the write is packed and sent.
FETCH_TURNS = 5
RETRIES_AFTER_STOP = 3
# Held-back users read, marked and published at a time: a worker that stops, or lets its
# partitions go, hands off every user it holds back (tens of thousands on a busy shop).
HELD_BACK_CHUNK = 1_000
# After a stop is asked for, how long the batch in flight may take to be written,
# published and committed before it is given up (`stop_within`); then how long each
# step of closing may take (`BatchWorker.close`). Within the 30 s an orchestrator
# usually allows between SIGTERM and SIGKILL.
SHUTDOWN_GRACE_S = 15.0
CLOSE_STEP_S = 3.0
# How long an offset commit may go unanswered before the worker looks whether its topics
# are still on the broker (aiokafka retries a commit to a deleted topic for ever).
COMMIT_CHECK_S = 10.0
# Batches in a row that applied nothing because the worker failed on every part of them
# (`internal_error`), after which `/ready` says not ready (`BatchWorker.batches_failing`):
# an encoder or a model broken for good dead-letters everything while the worker runs on.
UNREADY_AFTER_FAILED_BATCHES = 3


async def stop_within(task: asyncio.Task[T], grace_s: float = SHUTDOWN_GRACE_S) -> T | None:
    """`task`'s result (a worker's `run`, asked to stop), or None once `grace_s` passed
    or once it failed.

    Then the task is cancelled: the batch in flight is not committed, and its
    records are applied again (idempotently) by the partitions' next owner. A
    broker or Redis gone at shutdown would otherwise hold the worker for minutes.
    A worker asked to stop gives a step up after a few retries (`RETRIES_AFTER_STOP`):
    its batch is then left uncommitted the same way, and the stop is no failure.
    """
    done, _ = await asyncio.wait({task}, timeout=grace_s)
    if not done:
        log.warning("the batch in flight took over %.0f s: stopping without it", grace_s)
        task.cancel()
        await asyncio.wait({task})
    if task.cancelled():
        return None
    error = task.exception()
    if isinstance(error, Exception):
        log.warning("the batch in flight failed (%s: %s): stopping without it",
                    type(error).__name__, error)  # fmt: skip
        return None
    return task.result()


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def next_offsets(records: Sequence[SourceRecord]) -> dict[TopicPartition, int]:
    """Per partition, the offset after the batch's highest one: its position, what to commit.

    Keyed by plain tuples while counting (a `TopicPartition` per record cost
    about 1 µs each, a few % of a small batch's work).
    """
    highest: dict[tuple[str, int], int] = {}
    for record in records:
        key = record.topic, record.partition
        if record.offset > highest.get(key, -1):
            highest[key] = record.offset
    return {TopicPartition(topic, part): offset + 1 for (topic, part), offset in highest.items()}


def fetched_ends(
    fetched: Mapping[TopicPartition, Sequence[SourceRecord]],
) -> dict[TopicPartition, int]:
    """`next_offsets` of a fetch (`getmany`'s answer), from each partition's last record.

    A partition's records come in offset order, so its last is its highest: no
    pass over every record (about 1 % of the worker's time at a steady stream).
    """
    return {tp: part[-1].offset + 1 for tp, part in fetched.items() if part}


def profile_params(settings: Settings) -> ProfileParams:
    """The engine's plain arguments, taken from the settings."""
    return ProfileParams(
        category_half_life_ms=settings.category_half_life_days * MS_PER_DAY,
        category_slots=settings.category_slots,
        heartbeat_ms=int(settings.heartbeat_s * 1000),
        dedupe_window=settings.dedupe_window,
        currencies=settings.currencies(),
    )


@dataclass
class WorkerStats:
    """Running totals, for progress displays and the end-of-run summary."""

    started: float = field(default_factory=time.monotonic)
    first_batch_at: float | None = None  # monotonic time the first records arrived
    last_commit_at: float | None = None  # monotonic time the last batch was committed
    batches: int = 0
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    replayed: int = 0
    suppressed: int = 0  # events older than their user's erasure
    forwarded: int = 0  # events older than their user's merge, sent on to the user merged into
    dead_letters: int = 0
    profiles_written: int = 0
    changes_published: int = 0
    held_back_published: int = 0  # of those, messages the heartbeat had held back
    alerts_published: int = 0
    labels: Counter[str] = field(default_factory=Counter)  # label records by outcome
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)  # (command, outcome)
    commit_failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # dead letters by error code
    texts_encoded: int = 0  # distinct texts no cache had, run through the encoder
    encode_s: float = 0.0  # of busy_s, batches waiting on those encoder calls

    @property
    def busy_s(self) -> float:
        """Seconds from the first batch's arrival to the last commit (start-up excluded)."""
        if self.first_batch_at is None or self.last_commit_at is None:
            return 0.0
        return self.last_commit_at - self.first_batch_at

    def summary(self) -> dict[str, object]:
        """The totals as plain JSON-able values."""
        busy = self.busy_s
        return {
            "records": self.records,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "replayed": self.replayed,
            "suppressed": self.suppressed,
            "forwarded": self.forwarded,
            "dead_letters": self.dead_letters,
            "errors": dict(self.errors),
            "batches": self.batches,
            "profiles_written": self.profiles_written,
            "changes_published": self.changes_published,
            "held_back_published": self.held_back_published,
            "alerts_published": self.alerts_published,
            "labels": dict(self.labels),
            "commands": {
                f"{command} {outcome}": n for (command, outcome), n in self.commands.items()
            },
            "commit_failures": self.commit_failures,
            "texts_encoded": self.texts_encoded,
            "encode_s": round(self.encode_s, 3),
            "busy_s": round(busy, 3),
            "records_per_s": round(self.records / busy, 1) if busy else None,
        }

    def add(self, records: int, result: BatchResult) -> None:
        self.batches += 1
        self.records += records
        self.applied += result.outcomes["applied"]
        self.duplicates += result.outcomes["duplicate"]
        self.replayed += result.outcomes["replayed"]
        self.suppressed += result.outcomes["suppressed"]
        self.forwarded += result.outcomes["forwarded"]
        self.dead_letters += len(result.dead_letters)
        self.profiles_written += result.users_written
        self.changes_published += len(result.changes)
        self.alerts_published += len(result.alerts)
        self.labels.update(result.labels)
        self.commands.update(result.commands)
        self.errors.update(result.errors)


class _Folded(NamedTuple):
    """A folded batch (its commands' result in it), and its commands' result alone: should
    its write fail on a bug, the batch is applied apart without carrying them out again."""

    batch: FoldedBatch
    commanded: BatchResult


class _FoldFailed(Exception):
    """A batch's fold failed (`failure`) after its commands were carried out (`commanded`).

    Applied apart, the batch takes their result rather than carrying them out
    again: an erase then finds its own marker and would count as `repeated`.
    """

    def __init__(self, failure: Exception, commanded: BatchResult) -> None:
        super().__init__(f"{type(failure).__name__}: {failure}")
        self.failure, self.commanded = failure, commanded


def _fold_failure(exc: Exception) -> tuple[Exception, BatchResult | None]:
    """What a batch's fold failed on, and its commands' result when they were carried out."""
    if isinstance(exc, _FoldFailed):
        return exc.failure, exc.commanded
    return exc, None


class _Writing(NamedTuple):
    """A batch in the background: its write (`written`), then its publishing and commit."""

    written: asyncio.Future[BatchResult]  # done once the write landed (refolds included)
    task: asyncio.Task[None]  # write, acks, commit
    previous: asyncio.Task[None] | None  # the batch before, committed before this one
    records: Sequence[SourceRecord]  # the batch, to apply apart if its write fails on a bug
    commanded: BatchResult  # its commands' result, carried out in its fold
    users: AbstractSet[str]  # the users it writes
    ends: dict[TopicPartition, int]
    started: float


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark a finished task's error as retrieved; whoever awaits it still gets it."""
    if not task.cancelled():
        task.exception()


def ledger_ttl_ms(settings: Settings) -> int:
    """The held-back ledger's TTL: the setting, but never below the heartbeat (a ledger
    that expired before its users were due would lose them when a worker died)."""
    if not settings.held_back_ttl_s:
        return 0
    return max(settings.held_back_ttl_s * 1000, math.ceil(settings.heartbeat_s * 1000))


def _refused(exc: BaseException) -> bool:
    """Whether Redis refused the command itself: it would refuse it again, every time.

    A key of the wrong type, or one of our scripts failing on a value it cannot
    read: the batch then goes the way of a bug (`BatchWorker._apply_apart`),
    where only the users concerned are dead-lettered. Anything else Redis
    answers with an error (BUSY with another script, MISCONF while it cannot
    persist, NOREPLICAS, an error not known here) may pass and is retried, like
    connection losses, timeouts and fail-overs: a stalled worker loses nothing.
    """
    if isinstance(exc, DataError | ClusterCrossSlotError):  # refused before it was sent
        return True
    if isinstance(exc, RedisClusterException) and "same key slot" in str(exc):
        return True  # the cluster client's own refusal of keys in several slots
    if type(exc) is not ResponseError:  # its subclasses: OOM, READONLY, TRYAGAIN, ...
        return False
    message = str(exc)
    if "WRONGTYPE" in message:
        return True
    # Our script's own error: "Error running script ... @user_script:12: ...", but not
    # a server state the script ran into (those keep their code after the script's).
    return "user_script" in message and not any(code in message for code in _PASSING)


_PASSING: Final = ("BUSY", "MISCONF", "NOREPLICAS", "MASTERDOWN", "LOADING", "OOM", "READONLY")
# aiokafka leaves these unmarked as retriable, yet a broker away or slow to answer
# raises them: they pass when it is back.
_KAFKA_PASSING: Final = (KafkaTimeoutError, BrokerNotAvailableError, KafkaUnavailableError)


def _transient(exc: BaseException) -> bool:
    """Whether waiting may cure `exc`, so that `BatchWorker._retrying` tries again.

    The engine's errors and Kafka's say so themselves (`retriable`): one that
    cannot pass (a setting that cannot work, a record the producer refuses)
    fails its step at once, as a refusal of Redis does (`_refused`). A fold or
    write then goes the way of a bug (`BatchWorker._apply_apart`); a publish
    stops the worker with the error, its batch uncommitted. Retried, it held
    the worker for ever, with `/ready` failing and nothing saying why.
    """
    if isinstance(exc, ProfilerError):
        return exc.retriable
    if isinstance(exc, UnknownTopicOrPartitionError):
        return False  # aiokafka waited its request timeout for the topic already
    if isinstance(exc, KafkaError):
        return exc.retriable or isinstance(exc, _KAFKA_PASSING)
    return not _refused(exc)


def labels_positions(
    topic: str, assigned: AbstractSet[TopicPartition], models: ProfileModels
) -> dict[TopicPartition, int]:
    """Where to read each assigned `topic` (`fraud-labels`) partition from: after the
    last record the models learnt from it, or from its start when they learnt none
    (offset 0, which the consumer moves up to the earliest one kept).

    Labels are committed with each batch, the models snapshotted only now and then:
    after a crash in between, the committed offsets are past labels the restored
    models never learnt, and no label comes twice. From the models' own offsets
    they are read again and learnt (`apply_labels` learns a label again when its
    features carry it from this very record). At or past the committed offset the
    position only passes over records the models learnt already, which
    `apply_labels` would skip anyway. Every label of a partition the models know
    nothing of is news to them: new models (no snapshot saved, or none allowed
    without `PROFILER_MODEL_SECRET`) learn each label whose features are kept.
    """
    positions = {}
    for tp in assigned:
        if tp.topic == topic:
            offset = models.next_to_learn(tp.topic, tp.partition)
            positions[tp] = 0 if offset is None else offset
    return positions


def position_labels(
    consumer: AIOKafkaConsumer,
    topic: str,
    models: ProfileModels,
    assigned: AbstractSet[TopicPartition],
) -> None:
    """Read the labels partitions just assigned from the models' own offsets
    (`labels_positions`): also after a rebalance, since this worker's models may
    have learnt more or less of a partition than the worker that committed it."""
    positions = labels_positions(topic, assigned, models)
    for tp, offset in sorted(positions.items()):
        consumer.seek(tp, offset)
    if positions:
        log.info(
            "labels read from the models' offsets: %s",
            ", ".join(f"partition {tp.partition} at {offset}"
                      for tp, offset in sorted(positions.items())),
        )  # fmt: skip


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """The events-topic partitions this worker owns (labels partitions come along unlisted)."""

    def __init__(
        self,
        topic: str,
        positions: dict[TopicPartition, int],
        position_labels: Callable[[AbstractSet[TopicPartition]], None] | None = None,
    ) -> None:
        self.topic = topic
        # Seeks the labels partitions assigned (`position_labels`).
        self._position_labels = position_labels
        self.partitions: set[TopicPartition] = set()
        self.revoked: set[int] = set()  # events partitions let go since the worker last looked
        self.gained: set[int] = set()  # events partitions given since the worker last looked
        self._before: set[int] = set()  # those owned before the revocation under way
        self.generation = 0  # assignments so far
        # False from a revocation until the group's next assignment: until then, `revoked`
        # still holds the partitions this worker will be given back.
        self.settled = True
        self.assigned = asyncio.Event()  # set once the group gave this worker partitions
        self.joined = asyncio.Event()  # set once the group gave it its share, even none
        # The worker's next offsets (`BatchWorker._positions`): a partition that moves
        # away and back has a position again only with its next batch, not its old one.
        self._positions = positions

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._before |= {tp.partition for tp in self.partitions}
        self.partitions -= set(revoked)
        self.revoked |= {tp.partition for tp in revoked if tp.topic == self.topic}
        self.settled = False
        for tp in revoked:
            self._positions.pop(tp, None)
        metrics.forget_partitions(revoked)
        metrics.ASSIGNED_PARTITIONS.set(len(self.partitions))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self._positions.pop(tp, None)
        # A rebalance revokes every partition, then assigns most of them back: the users
        # held back on those stay this worker's to publish, and it knows them already.
        mine = {tp.partition for tp in assigned if tp.topic == self.topic}
        self.generation += 1
        self.gained |= mine - self._before
        self._before = set()
        self.revoked -= mine
        self.settled = True
        self.partitions |= {tp for tp in assigned if tp.topic == self.topic}
        metrics.ASSIGNED_PARTITIONS.set(len(self.partitions))
        if self.partitions:
            self.assigned.set()
        self.joined.set()
        # With no await before it: the consumer asks for the committed offsets once this
        # returns, and a label fetched from there and learnt first would have the models
        # skip the ones before it.
        if self._position_labels is not None:
            self._position_labels(assigned)


class BatchWorker:
    """One worker process's consumer loop. `run()` until stopped or idle."""

    def __init__(self, settings: Settings, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.settings = settings
        self.clock = clock
        self.params = profile_params(settings)
        self.stats = WorkerStats()
        self._lookups_counted = LookupTotals()  # the vector stage's lookups in the metrics so far
        self._positions: dict[TopicPartition, int] = {}  # next offset after the last batch
        self.redis = connect(settings.redis_url, cluster=settings.redis_cluster)
        self.store = RedisProfileStore(
            self.redis,
            settings.profile_ttl_s,
            scored_ttl_s=int(settings.scored_ttl_days * 86_400),
            cache_users=settings.profile_cache_users,
            erased_ttl_s=int(settings.erased_marker_days * 86_400),
        )
        interests = interest_model(settings, self.redis)
        self.models = build_models(settings, interests.encoder.dim if interests else 384)
        self.stages = Stages(interests, settings.vector_in_updates, self.models)
        self._checkpointed = time.monotonic()
        self._snapshots_allowed = False
        self.consumer: AIOKafkaConsumer = kafka.events_consumer(settings)
        # The labels hook holds the consumer and the models, not the worker, so a worker
        # never started is freed at once (no cycle through it keeps its clients alive).
        self.assignment = _Assignment(
            settings.topic_events,
            self._positions,
            partial(position_labels, self.consumer, settings.topic_labels, self.models)
            if self.models is not None
            else None,
        )
        self.producer: AIOKafkaProducer = kafka.producer(settings)
        self._stopping = asyncio.Event()
        self._profile_loads = (0, 0)  # the store's (cache, redis) loads at the last batch
        self._currencies_told: set[str] = set()  # currencies whose money a warning explained
        self._held: list[TopicPartition] = []  # paused while a batch is folded
        self.held_back = HeldBackIndex(self.params.heartbeat_ms)
        # The index's copy in Redis.
        self.ledger = HeldBackLedger(self.redis, settings.group_id, ttl_ms=ledger_ttl_ms(settings))
        self._ledger_saving = asyncio.Lock()  # the ledger's changes go out in the index's order
        self._handing_off: Taken = {}  # users of partitions let go, waiting for a write
        # How often the loop publishes held-back changes that came due.
        self._held_back_every_s = max(0.05, min(1.0, settings.heartbeat_s))
        self._held_back_at = time.monotonic()
        # Steps being retried (`_retrying`), each with its component and last error.
        self._failing: dict[object, tuple[str, str]] = {}
        self._failed_batches = 0  # batches in a row that applied nothing, failing on a bug
        self._internal_error = ""  # the last failure that dead-lettered records

    async def start(self) -> None:
        await self.redis.ping()
        if self.stages.interests is not None:
            await self._check_compact_profiles(self.stages.interests.encoder.dim)
        if self.models is not None:
            await restore_models(self.models, self.redis, self.settings)
            self._snapshots_allowed = True  # never overwrite a snapshot we could not read
        await self.producer.start()
        await self.consumer.start()
        # Labels and commands are keyed by user id and co-partitioned with the events,
        # so a user's erase runs on the worker that folds the user's events.
        topics = [self.settings.topic_events, self.settings.topic_commands]
        if self.models is not None:
            topics.append(self.settings.topic_labels)
        self.consumer.subscribe(topics, listener=self.assignment)

    async def _check_compact_profiles(self, dim: int) -> None:
        limit = await compact_hash_limit(self.redis)
        if limit is not None and limit < 4 * dim:
            log.warning(
                "Redis keeps a hash compact only with values up to %d bytes: profiles with "
                "%d-byte vectors will take its larger encoding (about 1.4 KB more each); "
                "set hash-max-listpack-value 2048 as docker-compose.yml does",
                limit,
                4 * dim,
            )

    async def checkpoint(self) -> bool:
        """Save a signed snapshot of the models (with their offsets) when a secret is set."""
        self._checkpointed = time.monotonic()
        if self.models is None or not self._snapshots_allowed:
            return False
        return await save_models(self.models, self.redis, self.settings)

    async def close(self) -> None:
        """Snapshot the models, then close the clients; each step bounded (`CLOSE_STEP_S`).

        A step that fails or hangs (a broker or Redis gone) is logged and the next
        one runs: every client is closed whatever happened before. Then the worker
        owns no partition and holds back no user, and its gauges say so.
        """
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("the consumer's stop", self._stop_consumer),
            ("the producer's stop", self.producer.stop),
            ("closing Redis", self.redis.aclose),
        ]
        if self.models is not None:
            steps.insert(0, ("the model snapshot at shutdown", self.checkpoint))
        try:
            for what, step in steps:
                try:
                    # Not `wait_for`: on Python 3.11 it drops a cancel of this close that
                    # comes as the step finishes, and the close went on with every step.
                    async with asyncio.timeout(CLOSE_STEP_S):
                        await step()
                except (Exception, asyncio.CancelledError) as exc:
                    task = asyncio.current_task()
                    if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                        raise  # this close itself is being cancelled
                    log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        finally:
            # A stopping consumer calls no rebalance listener, yet a closed worker owns
            # nothing: its gauges in this process's registry must not say otherwise.
            await self.assignment.on_partitions_revoked(set(self.assignment.partitions))
            metrics.HELD_BACK_USERS.set(0)

    async def _stop_consumer(self) -> None:
        try:
            await self.consumer.stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this stop itself is being cancelled (its bound, or the close)
            # With the broker gone, a fetch may be waiting out its retry backoff: aiokafka's
            # fetcher cancels it and lets its cancellation out of `stop()`, which then returns
            # before it closes the consumer's client, whose metadata task retries for ever.
            await self.consumer._client.close()

    async def broker_reachable(self) -> bool | str:
        """True when the brokers answer a metadata request now, else the reason."""
        try:
            await asyncio.wait_for(self.consumer.topics(), timeout=2.0)
        except (KafkaError, OSError, TimeoutError) as exc:
            return f"error: {exc!r}"
        return True

    def consumer_lag(self) -> dict[TopicPartition, int]:
        """Records behind the fetch high watermark, per owned partition with a known position."""
        lag = {}
        for tp in self.assignment.partitions:
            highwater = self.consumer.highwater(tp)
            position = self._positions.get(tp)
            if highwater is not None and position is not None:
                lag[tp] = max(0, highwater - position)
        return lag

    async def lag_now(
        self, timeout_s: float
    ) -> tuple[dict[TopicPartition, int], list[TopicPartition]]:
        """`consumer_lag` for every owned partition, and those whose lag is not known yet.

        A partition no batch has come from yet counts from the consumer's position
        (the committed offset after an assignment), asked for at most `timeout_s`
        for all of them; one whose end no fetch has told yet is not known.
        """
        lag = self.consumer_lag()
        unknown, asked = [], []
        for tp in self.assignment.partitions:
            if tp not in lag:
                highwater = self.consumer.highwater(tp)
                if highwater is None:
                    unknown.append(tp)
                else:
                    asked.append((tp, highwater))
        if asked:
            try:
                positions = await asyncio.wait_for(
                    asyncio.gather(*(self.consumer.position(tp) for tp, _ in asked)), timeout_s
                )
            except (KafkaError, IllegalStateError, TimeoutError):  # given back, or no answer
                return lag, unknown + [tp for tp, _ in asked]
            for (tp, highwater), position in zip(asked, positions, strict=True):
                lag[tp] = max(0, highwater - position)
        return lag, unknown

    def request_stop(self) -> None:
        """Finish the batch in flight, commit it, and return from `run()` (SIGTERM)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self, until_idle_s: float | None = None) -> WorkerStats:
        """Consume until `request_stop()`, or until nothing arrived for `until_idle_s`.

        Batch N's write runs in Redis while batch N+1 is taken and folded;
        N+1's write is sent once N's has landed, and N's producer acks and
        offset commit overlap with N+1's write. Commits stay in batch order and
        at most one batch is publishing behind the one writing.

        The consumer fetches ahead, but only for partitions whose fetched
        records were all taken: left alone, it fetches just after a batch is
        taken, and what arrives while that batch is folded waits on the
        broker for a whole batch more (a record became readable two to three
        batch times after it arrived). So the worker pauses its partitions
        while it folds a batch and resumes them when the batch's write to
        Redis begins: the fetch brings what arrived during the batch's work,
        and the next batch takes it. The fetch request goes out before the
        write is packed, because the broker's answer takes longer (5 to 13 ms
        from Tansu here, against about 8 ms of packing for 300 users). A full
        batch means a backlog: then the consumer fetches ahead as it would.
        """
        idle_since: float | None = None
        last: _Writing | None = None  # the batch whose write (then publishing) is under way
        try:
            while not self.stopping:
                await self._publish_held_back(last)
                batches = await self.consumer.getmany(
                    timeout_ms=self.settings.batch_max_ms,
                    max_records=self.settings.batch_max_events,
                )
                records = [record for part in batches.values() for record in part]
                if records:
                    idle_since = None
                    started = time.monotonic()
                    ends = fetched_ends(batches)
                    last = await self._settled_for_commands(last, ends)
                    if len(records) < self.settings.batch_max_events:
                        self._hold_fetches()  # keeping up: fetch late, for freshness
                    folding = await self._fold_guarded(records, ends, started, last)
                    if folding is None:  # applied apart, and committed, with the one before
                        last = None
                        continue
                    folded, commanded = folding
                    stale: AbstractSet[str] = frozenset()
                    if last is not None:
                        after = await self._after_write(last, records, ends, started, folded)
                        if after is None:  # both applied apart, and committed
                            last = None
                            continue
                        folded, stale, last = after
                    self._fetch_again()
                    for _ in range(FETCH_TURNS):
                        await asyncio.sleep(0)
                    last = self._write_in_background(
                        records, ends, folded, commanded, stale=stale, started=started, last=last
                    )
                    await asyncio.sleep(0)  # the write is packed and sent before the next take
                    continue
                if last is not None:
                    await self._settle(last)
                    last = None
                # Idle only once in the group: a worker still joining has not had
                # its share yet, while one given none (more workers than
                # partitions) has nothing to wait for.
                if until_idle_s is None or not self.assignment.joined.is_set():
                    continue
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= until_idle_s:
                    break
        finally:
            if last is not None:
                await self._let_go(last)
        # Stopping: the users still waiting are handed off, published now. Not after a
        # failure (an exception above): the worker then stops as it is, and the ledger
        # keeps them for the partitions' next owner.
        await self._publish_held_back(None, handing_off=self.held_back.take_all())
        return self.stats

    async def _publish_held_back(
        self, last: _Writing | None, handing_off: Taken | None = None
    ) -> None:
        """Publish the change messages the heartbeat held back that are due now, and
        those of partitions let go (`handing_off`, and the ones revoked since).

        Users that `last` writes wait for it: its write may publish them or hold
        them back again, and a message is only ever of a profile that landed.
        Partitions given since the last call first bring their users from the
        ledger: what their last owner held back, had it no time to publish it.
        """
        if self.assignment.gained:
            await self._restore_held_back()
        self._handing_off.update(handing_off or {})
        if self.assignment.revoked and self.assignment.settled:
            self._handing_off.update(self.held_back.take_partitions(self.assignment.revoked))
            self.assignment.revoked.clear()
        writing = last.users if last is not None else frozenset()
        handing = {u: e for u, e in self._handing_off.items() if u not in writing}
        self._handing_off = {u: e for u, e in self._handing_off.items() if u in writing}
        due: Taken = {}
        if time.monotonic() - self._held_back_at >= self._held_back_every_s:
            self._held_back_at = time.monotonic()
            due = self.held_back.take_due(self.clock(), skip=writing)
        if not due and not handing:
            return
        again = self.held_back.restored(due | handing)  # from the ledger: maybe never sent
        groups = (  # (users, handing off, again)
            ({u: e for u, e in due.items() if u not in again}, False, False),
            ({u: e for u, e in handing.items() if u not in again}, True, False),
            (again, False, True),
        )
        try:
            for group, hand_off, once_more in groups:
                users = list(group.items())
                for start in range(0, len(users), HELD_BACK_CHUNK):
                    chunk = dict(users[start : start + HELD_BACK_CHUNK])
                    await self._publish_group(chunk, handing_off=hand_off, again=once_more)
        except Exception as exc:
            log.error(
                "publishing %d held-back change messages failed (%s: %s); they wait for their "
                "users' next events, or for the partitions' next owner (the ledger)",
                len(due) + len(handing), type(exc).__name__, exc, exc_info=exc,
            )  # fmt: skip
        # Failing as the worker stops, it leaves the users published as waiting in the
        # ledger: the next owner publishes them again, a harmless repeat.
        with contextlib.suppress(Exception):
            await self._save_ledger()
        metrics.HELD_BACK_USERS.set(len(self.held_back))

    async def _restore_held_back(self) -> None:
        """Take in the ledger's users of the partitions given since the last look.

        Read once the group settled, and again when an assignment came during
        the read: the partitions owned, and what their sets hold, are known
        only after it.
        """
        gained = set(self.assignment.gained)
        generation = self.assignment.generation
        if not self.assignment.settled:
            return
        try:
            ledger, refused = await self._retrying("redis", partial(self.ledger.read, gained))
        except Exception as exc:  # Redis gone as the worker stops
            log.error("reading the held-back ledger of partitions %s failed (%s: %s)",
                      sorted(gained), type(exc).__name__, exc)  # fmt: skip
            return
        if self.assignment.generation != generation or not self.assignment.settled:
            return
        self.assignment.gained -= gained
        for partition, error in refused.items():
            log.error("the held-back ledger of partition %d cannot be read (%s); its users "
                      "wait for their next events", partition, error)  # fmt: skip
        owned = {tp.partition for tp in self.assignment.partitions}
        restored = sum(
            self.held_back.restore(partition, users)
            for partition, users in ledger.items()
            if partition in owned  # else let go again meanwhile: the next owner reads it
        )
        if restored:
            log.info("%d users with held-back changes taken from the ledger of partitions %s",
                     restored, sorted(gained & owned))  # fmt: skip
        metrics.HELD_BACK_USERS.set(len(self.held_back))

    async def _publish_group(
        self, group: Taken, *, handing_off: bool = False, again: bool = False
    ) -> None:
        """Publish these users' held-back changes (those still waiting) and settle them."""
        held = await self._retrying(
            "redis",
            partial(
                held_back_changes, list(group), self.store, self.params, self.clock(),
                self.stages, handing_off=handing_off, again=again,
            ),
        )  # fmt: skip
        refused = set(await self._retrying("redis", partial(self.store.save, held.writes)))
        changes = held.landed(refused)
        await self._retrying("kafka", partial(self._publish, BatchResult(changes)))
        # A refused mark: another worker wrote the user meanwhile, and its ledger entry
        # may be that worker's, due when this one's was.
        self.held_back.settled({u: e for u, e in group.items() if u not in refused})
        marked = len(held.writes) - len(refused)  # the profiles marked published: writes too
        self.stats.profiles_written += marked
        metrics.PROFILES_WRITTEN.inc(marked)
        self.stats.changes_published += len(changes)
        self.stats.held_back_published += len(changes)
        metrics.CHANGES_PUBLISHED.inc(len(changes))
        metrics.HELD_BACK_PUBLISHED.inc(len(changes))

    async def _save_ledger(self) -> None:
        """Save what changed in the held-back index to its ledger, in the order it changed.

        The ledger only spares users a crash of this worker: a save Redis
        refuses (a partition's key of another type) is logged and dropped, and
        the batch goes on to its commit. One that fails as the worker stops
        (Redis gone) is logged and raises: the batch it was saved for is then
        not committed, and its replay by the partitions' next owner publishes
        the changes it held back (neither this worker, with Redis gone, nor
        the ledger would).
        """
        async with self._ledger_saving:
            changes = self.held_back.unsaved()
            if not changes:
                return
            try:
                refused = await self._retrying("redis", partial(self.ledger.save, changes))
            except Exception as exc:
                log.error("saving the held-back ledger failed (%s: %s)%s", type(exc).__name__, exc,
                          ": the batch is left to the partitions' next owner to replay"
                          if self.stopping else "")  # fmt: skip
                if self.stopping:
                    raise
                return
            if refused:
                log.error("the held-back ledger of partitions %s holds another type of value: "
                          "not saved", refused)  # fmt: skip

    async def _let_go(self, last: _Writing) -> None:
        """At the end of `run`: `last` written, published and committed; or, when `run` is
        being cancelled (`stop_within` gave up on it), cancelled: not committed, its
        records are replayed."""
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            await self._settle(last)
            return
        for writing in (last.task, last.previous):
            if writing is not None:
                writing.cancel()

    async def _settled_for_commands(
        self, last: _Writing | None, ends: dict[TopicPartition, int]
    ) -> _Writing | None:
        """`last`, or None once it is settled when this batch carries commands.

        An erase waits for the batch before it to be written and published: that
        batch's change messages then go out before the tombstone, never after.
        """
        if last is None or not self._carries_commands(ends):
            return last
        await self._settle(last)
        return None

    def _hold_fetches(self) -> None:
        """Fetch nothing until `_fetch_again` (see `run`)."""
        self._held = list(self.consumer.assignment())
        self.consumer.pause(*self._held)

    def _fetch_again(self) -> None:
        """Resume the partitions `_hold_fetches` paused that are still ours."""
        if self._held:
            owned = self.consumer.assignment()
            self.consumer.resume(*[tp for tp in self._held if tp in owned])
            self._held = []

    async def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        """Fold, write, publish and commit one batch, start to end."""
        started = time.monotonic()
        ends = next_offsets(records)
        try:
            folded, _ = await self._fold(records, ends, started)
        except Exception as exc:
            failure, commanded = _fold_failure(exc)
            if self.stopping:
                raise failure from None
            return await self._apply_apart(records, ends, started, failure, commanded)
        result = await self._write(records, folded, frozenset())
        await self._finish(records, ends, result, started)
        return result

    async def _fold_guarded(
        self,
        records: Sequence[SourceRecord],
        ends: dict[TopicPartition, int],
        started: float,
        last: _Writing | None,
        *,
        learn: bool = True,
    ) -> _Folded | None:
        """`_fold`; or, when that fails on neither Redis nor Kafka, `_apply_apart` (None).

        The fetch `run` held is let go either way when it fails.
        """
        try:
            return await self._fold(records, ends, started, learn=learn)
        except Exception as exc:
            failure, commanded = _fold_failure(exc)
            if self.stopping:  # Redis or Kafka gone as we stop: the batch is replayed later
                self._fetch_again()
                raise failure from None
            if last is not None:
                await self._settle(last)  # the batch before: written, published, committed
            await self._apply_apart(records, ends, started, failure, commanded)
            self._fetch_again()
            return None
        except BaseException:
            self._fetch_again()
            raise

    async def _landed(self, last: _Writing) -> BatchResult | None:
        """`last`'s write; None when it failed on neither Redis nor Kafka (a bug).

        Then the batch is applied apart (`_apply_apart`), after the batch
        before it is committed, and committed itself. A batch folded while
        that write was under way was folded from profiles that may never
        have been sent: fold it again.
        """
        try:
            return await last.written
        except Exception as exc:
            with contextlib.suppress(Exception):
                await last.task  # ended with the same exception
            if self.stopping:
                raise
            if last.previous is not None:
                await last.previous
            await self._apply_apart(last.records, last.ends, last.started, exc, last.commanded)
            return None

    async def _after_write(
        self,
        last: _Writing,
        records: Sequence[SourceRecord],
        ends: dict[TopicPartition, int],
        started: float,
        folded: FoldedBatch,
    ) -> tuple[FoldedBatch, AbstractSet[str], _Writing | None] | None:
        """Wait for `last`'s write, folded while it ran: the batch, `stale`, and `last`.

        When that write failed on a bug (`_landed`), the batch is folded again
        (`last` is then committed and None); None when it too was applied apart.
        """
        landed = await self._landed(last)
        if landed is None:  # the models learnt this batch in its first fold
            again = await self._fold_guarded(records, ends, started, None, learn=False)
            return None if again is None else (again.batch, frozenset(), None)
        if last.previous is not None:
            await last.previous
        return folded, landed.refolded, last

    async def _settle(self, last: _Writing) -> None:
        """Wait until `last` is written, published and committed (or applied apart)."""
        if await self._landed(last) is not None:
            await last.task

    async def _apply_apart(
        self,
        records: Sequence[SourceRecord],
        ends: dict[TopicPartition, int],
        started: float,
        failure: Exception,
        commanded: BatchResult | None = None,
    ) -> BatchResult:
        """A batch whose fold or write failed on neither Redis nor Kafka (a bug), user by user.

        `commanded`: the result of its commands when the failed fold carried them
        out; else they are carried out here, each on its own.

        The batch's users are folded and written one at a time, from the store;
        the events of a user whose fold or write fails again are dead-lettered
        (`internal_error`, with the exception) instead of stopping the worker:
        left alone, the same batch would stop every restart, and with it every
        user of its partitions. Then labels, publishing and the commit, as for
        any batch. The models may have learnt part of the failed batch already,
        and learn those events once more here.
        """
        log.error(
            "a batch of %d records failed (%s: %s); applying it user by user",
            len(records), type(failure).__name__, failure, exc_info=failure,
        )  # fmt: skip
        events = [r for r in records if r.topic == self.settings.topic_events]
        result = BatchResult()
        if commanded is not None:  # each counted once, as it was carried out
            result.add(commanded)
        else:
            for command in self._commands(records):  # in order, each on its own
                await self._apart(result, [command], partial(self._apply_commands, [command]))
        for user_records in _by_key(events):
            await self._apart(
                result,
                user_records,
                partial(
                    self._retrying,
                    "redis",
                    partial(
                        apply_batch, user_records, self.store, self.params, self.clock, self.stages
                    ),
                ),
            )
        self._count_encoding()
        self._advance_models(ends)
        for label in (r for r in records if r.topic == self.settings.topic_labels):
            await self._apart(result, [label], partial(self._labels_apart, label))
        await self._finish(records, ends, result, started)
        return result

    async def _apart(
        self,
        result: BatchResult,
        records: Sequence[SourceRecord],
        apply: Callable[[], Awaitable[BatchResult]],
    ) -> None:
        """One part of a batch applied apart: its result, or its records dead-lettered."""
        try:
            part = await apply()
        except Exception as exc:
            if self.stopping:
                raise
            self._dead_letter_apart(records, exc, result)
            return
        result.add(part)

    async def _labels_apart(self, label: SourceRecord) -> BatchResult:
        part = BatchResult()
        await self._learn_labels([label], part)
        return part

    def _dead_letter_apart(
        self, records: Sequence[SourceRecord], failure: Exception, result: BatchResult
    ) -> None:
        """`internal_error` dead letters for records the worker failed on (`_apply_apart`)."""
        if not records:
            return
        log.error(
            "dead-lettering %d records (%s: %s)",
            len(records), type(failure).__name__, failure, exc_info=failure,
        )  # fmt: skip
        rejection = Rejection(INTERNAL_ERROR, f"{type(failure).__name__}: {failure}")
        self._internal_error = rejection.detail
        now = self.clock()
        result.dead_letters += [
            (record.key, dead_letter_for(record, rejection, now)) for record in records
        ]
        result.errors[INTERNAL_ERROR] += len(records)

    def _carries_commands(self, ends: dict[TopicPartition, int]) -> bool:
        """Whether a batch (its partitions: `next_offsets`) holds `profile-commands` records."""
        topic = self.settings.topic_commands
        return any(tp.topic == topic for tp in ends)

    def _commands(self, records: Sequence[SourceRecord]) -> list[CommandRecord]:
        topic = self.settings.topic_commands
        return [r for r in records if r.topic == topic]  # type: ignore[misc]

    async def _apply_commands(self, commands: Sequence[CommandRecord]) -> BatchResult:
        """Carry out a batch's `profile-commands` records (before its events are folded)."""
        if not commands:
            return BatchResult()
        return await self._retrying(
            "redis",
            lambda: apply_commands(commands, self.store, self.clock(), self.params, self.stages),
        )

    async def _fold(
        self,
        records: Sequence[SourceRecord],
        ends: dict[TopicPartition, int],
        started: float,
        *,
        learn: bool = True,
    ) -> _Folded:
        """Fold a batch whose next offsets (`next_offsets`) are `ends` (commands first);
        `learn=False` when the models learnt it already (folded again).

        A fold that fails after the batch's commands were carried out raises
        `_FoldFailed`, which carries their result.
        """
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = started
        self._positions.update(ends)
        commands = self._commands(records) if self._carries_commands(ends) else []
        commanded = await self._apply_commands(commands)
        events = [r for r in records if r.topic == self.settings.topic_events]
        try:
            folded = await self._retrying(
                "redis",
                lambda: fold_batch(
                    events, self.store, self.params, self.clock, self.stages, learn=learn
                ),
            )
        except Exception as exc:
            if commands:
                raise _FoldFailed(exc, commanded) from exc
            raise
        finally:  # a fold that failed looked up and encoded too
            self._count_encoding()
        self._advance_models(ends)
        folded.result.add(commanded)
        return _Folded(folded, commanded)

    def _advance_models(self, ends: dict[TopicPartition, int]) -> None:
        """The models have learnt the events up to `ends` (labels advance as they are learnt)."""
        if self.models is not None:
            for tp, end in ends.items():
                if tp.topic == self.settings.topic_events:
                    self.models.advance(tp.topic, tp.partition, end - 1)

    async def _write(
        self, records: Sequence[SourceRecord], folded: FoldedBatch, stale: AbstractSet[str]
    ) -> BatchResult:
        """Write a folded batch (`stale`: the previous batch's users folded again), then labels."""
        result = await self._retrying("redis", lambda: folded.write(stale=stale))
        await self._learn_labels(records, result)
        return result

    def _write_in_background(
        self,
        records: Sequence[SourceRecord],
        ends: dict[TopicPartition, int],
        folded: FoldedBatch,
        commanded: BatchResult,
        *,
        stale: AbstractSet[str],
        started: float,
        last: _Writing | None,
    ) -> _Writing:
        """Start writing a batch, then publishing and committing it after `last` is committed."""
        written: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        previous = last.task if last is not None else None

        async def write_then_finish() -> None:
            try:
                result = await self._write(records, folded, stale)
            except asyncio.CancelledError:
                written.cancel()
                raise
            except BaseException as exc:
                written.set_exception(exc)
                written.exception()  # marked retrieved: the loop raises it from the task
                raise
            written.set_result(result)
            if previous is not None:
                await previous
            await self._finish(records, ends, result, started)

        task = asyncio.create_task(write_then_finish())
        # A stop may leave it unawaited (the run failed first, on the same Redis or broker):
        # its error is then told by the stop ("stopping without it"), not as never retrieved.
        task.add_done_callback(_retrieved)
        return _Writing(
            written, task, previous, records, commanded, folded.by_user.keys(), ends, started
        )

    async def _learn_labels(self, records: Sequence[SourceRecord], result: BatchResult) -> None:
        """Teach the models the batch's `fraud-labels` records."""
        labels = [r for r in records if r.topic == self.settings.topic_labels]
        if not labels or self.models is None:
            return
        models = self.models
        learnt = await self._retrying(
            "redis", lambda: apply_labels(labels, self.store, models, self.clock())
        )
        result.dead_letters += learnt.dead_letters
        result.errors.update(learnt.errors)
        result.labels.update(learnt.outcomes)

    def _count_encoding(self) -> None:
        """Carry the vector stage's lookups and encoder totals since the last count into the
        metrics and the stats: after every fold, one that failed included, and after a
        batch applied apart (`_apply_apart`)."""
        lookups = self._embedding_totals()
        if self.stages.interests is None or lookups is None:
            return
        metrics.observe_embeddings(self._lookups_counted, lookups)
        self._lookups_counted = lookups
        totals = self.stages.interests.lru.stats
        metrics.ENCODER_SECONDS.inc(totals.encode_seconds - self.stats.encode_s)
        self.stats.texts_encoded, self.stats.encode_s = totals.encoded, totals.encode_seconds

    def _embedding_totals(self) -> LookupTotals | None:
        interests = self.stages.interests
        if interests is None:
            return None
        return interests.lru.stats.totals()

    async def _finish(
        self,
        records: Sequence[SourceRecord],
        ends: dict[TopicPartition, int],
        result: BatchResult,
        started: float,
    ) -> None:
        """Publish the batch's messages, wait for every ack, then commit `ends`."""
        await self._retrying("kafka", lambda: self._publish(result))
        self.held_back.note(result.held_back, [user for user, _ in result.changes] + result.erased)
        if result.held_back:
            # A partition let go while this batch was written was handed off already: the
            # users it held back there are handed off at the loop's next look.
            owned = {tp.partition for tp in self.assignment.partitions}
            topic = self.settings.topic_events
            self.assignment.revoked |= {
                tp.partition for tp in ends if tp.topic == topic and tp.partition not in owned
            }
        metrics.HELD_BACK_USERS.set(len(self.held_back))
        await self._save_ledger()  # before the commit: a crash then leaves it to the replay
        await self._commit(ends)
        self.stats.last_commit_at = time.monotonic()
        self.stats.add(len(records), result)
        self._count_failed_batch(result)
        self._observe(records, result, started)
        await self._checkpoint_if_due()

    async def _checkpoint_if_due(self) -> None:
        """The periodic model snapshot. One that fails (Redis away, a cluster resharding,
        anything else) is logged and tried again next time: it never stops the worker."""
        if time.monotonic() - self._checkpointed < self.settings.model_checkpoint_s:
            return
        try:
            await self.checkpoint()
        except Exception as exc:
            log.warning("model snapshot failed (next try in %ss): %s: %s",
                        self.settings.model_checkpoint_s, type(exc).__name__, exc)  # fmt: skip

    async def _retrying(self, component: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt_once` until it succeeds or fails on what cannot pass (`_transient`),
        backing off; both steps are idempotent.

        While it fails, its last error is what `failing` reports for `component`.
        """
        attempt, retrying = 0, object()
        try:
            while True:
                try:
                    return await attempt_once()
                except (
                    RedisError, RedisClusterException, KafkaError, ProfilerError, OSError
                ) as exc:  # fmt: skip
                    # RedisClusterException: a cluster that cannot be reached or has a slot
                    # no node serves (resharding); not a RedisError, yet it passes.
                    if not _transient(exc):
                        raise
                    attempt += 1
                    self._failing[retrying] = component, f"{type(exc).__name__}: {exc}"
                    if self.stopping and attempt > RETRIES_AFTER_STOP:
                        raise
                    metrics.RETRIES.labels(component).inc()
                    delay = min(MAX_BACKOFF_S, 0.05 * 2 ** min(attempt, 16))  # 2**1024: no float
                    log.warning(
                        "%s step failed (attempt %d, %s: %s); retrying in %.2fs",
                        component, attempt, type(exc).__name__, exc, delay,
                    )  # fmt: skip
                    await asyncio.sleep(delay)
        finally:
            self._failing.pop(retrying, None)

    def _count_failed_batch(self, result: BatchResult) -> None:
        """Count a committed batch towards `batches_failing`: one with `internal_error`
        dead letters and nothing applied adds one, one that applied something (an event,
        a command, a label) starts again from none. Any other (only malformed records,
        only duplicates or replays) says nothing of the worker and changes nothing."""
        applied = (
            result.outcomes["applied"]
            or result.labels["learnt"]
            or any(outcome != "dead_lettered" for _, outcome in result.commands)
        )
        if applied:
            self._failed_batches = 0
        elif result.errors[INTERNAL_ERROR]:
            self._failed_batches += 1

    def batches_failing(self) -> str | None:
        """Why the worker is of no use although every server answers, or None.

        After `UNREADY_AFTER_FAILED_BATCHES` batches in a row in which nothing
        could be applied because the worker failed on it (not the input), it
        commits batches that only fill the DLQ; an orchestrator should be told,
        as for a server that fails. The first batch that applies ends it.
        """
        if self._failed_batches < UNREADY_AFTER_FAILED_BATCHES:
            return None
        return (
            f"error: the last {self._failed_batches} batches applied nothing: their records "
            f"were dead-lettered as {INTERNAL_ERROR} (last: {self._internal_error})"
        )

    def failing(self, component: str) -> str | None:
        """The last error of a `component` ("redis" or "kafka") step being retried now.

        Redis may answer a PING while refusing every write (a demoted primary:
        READONLY; MISCONF, OOM): the worker then retries its batch for ever, and
        only this tells `/ready` so.
        """
        for name, error in self._failing.values():
            if name == component:
                return error
        return None

    async def _publish(self, result: BatchResult) -> None:
        settings = self.settings
        messages: list[tuple[str, bytes | None, bytes | None]] = [
            (settings.topic_dlq, key, body) for key, body in result.dead_letters
        ]
        messages += [
            (settings.topic_events, user_id.encode(), body) for user_id, body in result.forwarded
        ]
        # Tombstones first: a change message of this batch is of a profile built since.
        messages += [(settings.topic_updates, user_id.encode(), None) for user_id in result.erased]
        messages += [
            (settings.topic_updates, user_id.encode(), body) for user_id, body in result.changes
        ]
        messages += [
            (settings.topic_alerts, user_id.encode(), body) for user_id, body in result.alerts
        ]
        pending = await kafka.send_all(self.producer, messages)
        if pending:
            await asyncio.gather(*pending)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit `offsets`; `TopicGoneError` when their topic left the broker meanwhile.

        aiokafka retries a commit the broker refuses with `UnknownTopicOrPartitionError`
        for ever: while one goes unanswered, the worker looks every `COMMIT_CHECK_S`
        whether its topics are still there, and stops (the batch uncommitted) once one
        is not. A broker merely slow or away is waited for, as before.
        """
        # aiokafka refuses a commit naming a partition no longer assigned, whole: the
        # partitions a rebalance left here are committed, the others are the new owner's.
        assigned = self.consumer.assignment()
        let_go = [tp for tp in offsets if tp not in assigned]
        if let_go:
            self.stats.commit_failures += 1
            metrics.COMMIT_FAILURES.inc()
            log.warning(
                "offsets of %s not committed: let go in a rebalance, the new owner replays "
                "idempotently",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in let_go),
            )
            offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            if not offsets:
                return
        commit = asyncio.ensure_future(self.consumer.commit(offsets))
        try:
            while not (await asyncio.wait({commit}, timeout=COMMIT_CHECK_S))[0]:
                gone = await self._topics_gone({tp.topic for tp in offsets})
                if gone:
                    raise kafka.TopicGoneError(
                        f"topic {', '.join(sorted(gone))} is no longer on the broker (deleted?): "
                        "the batch's offsets cannot be committed"
                    )
            await commit
        except (CommitFailedError, IllegalStateError) as exc:
            if not let_go:  # counted once a batch
                self.stats.commit_failures += 1
                metrics.COMMIT_FAILURES.inc()
            log.warning("offset commit refused (%s); the new owner replays idempotently", exc)
        finally:
            commit.cancel()  # when the commit is given up on (or this task cancelled)

    async def _topics_gone(self, topics: AbstractSet[str]) -> set[str]:
        """Those of `topics` the broker no longer lists; none when it does not answer."""
        try:
            # Not `wait_for`, which on Python 3.11 drops a cancel (a stop past its grace)
            # that comes as the answer does: the commit was waited for on and on.
            async with asyncio.timeout(2.0):
                present = await self.consumer.topics()
        except (KafkaError, OSError, TimeoutError):
            return set()
        return set(topics) - set(present)

    def _observe(
        self, records: Sequence[SourceRecord], result: BatchResult, started: float
    ) -> None:
        loads = (self.store.loads_from_cache, self.store.loads_from_redis)
        metrics.PROFILE_LOADS.labels("cache").inc(loads[0] - self._profile_loads[0])
        metrics.PROFILE_LOADS.labels("redis").inc(loads[1] - self._profile_loads[1])
        self._profile_loads = loads
        metrics.BATCH_SIZE.observe(len(records))
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        metrics.PROFILES_WRITTEN.inc(result.users_written)
        metrics.CHANGES_PUBLISHED.inc(len(result.changes))
        metrics.ALERTS.inc(len(result.alerts))
        for outcome, count in result.labels.items():
            metrics.LABELS.labels(outcome).inc(count)
        if result.risk_scores:
            metrics.RISK_SCORES.observe_all([score for _, score in result.risk_scores])
        if result.model_drifts:
            metrics.MODEL_DRIFT.labels("risk").inc(result.model_drifts)
            log.warning("risk score drift detected by ADWIN (%d in this batch)",
                        result.model_drifts)  # fmt: skip
        if result.segment_moves:
            metrics.SEGMENT_MOVES.inc(result.segment_moves)
        for kind, count in result.by_type.items():
            metrics.EVENTS.labels(kind, "applied").inc(count)
        if result.foreign_purchases:
            self._observe_currencies(result.foreign_purchases)
        for outcome in ("duplicate", "replayed", "suppressed", "forwarded"):
            if result.outcomes[outcome]:
                metrics.EVENTS.labels("any", outcome).inc(result.outcomes[outcome])
        for (command, outcome), count in result.commands.items():
            metrics.COMMANDS.labels(command, outcome).inc(count)
        for error, count in result.errors.items():
            metrics.DEAD_LETTERS.labels(error).inc(count)
        topic = self.settings.topic_events  # not labels or commands: they have their own
        events = sum(orjson.loads(body)["topic"] == topic for _, body in result.dead_letters)
        if events:
            metrics.EVENTS.labels("unknown", "dead_lettered").inc(events)
        if result.event_ts:
            written = result.written_ms or self.clock()
            ages = written - np.array(result.event_ts, dtype=np.int64)
            metrics.EVENT_TO_STORE_SECONDS.observe_all(np.maximum(ages, 0) / 1000)

    def _observe_currencies(self, purchases: Mapping[str, int]) -> None:
        """Count purchases in other currencies, those without a rate as `other`; say once
        per currency when their money is not converted (no rates: summed as sent; no rate
        for it: left out)."""
        currencies = self.params.currencies
        for currency, count in purchases.items():
            handling = currencies.handling(currency)
            label = currency if handling == CONVERTED else metrics.OTHER_CURRENCY
            metrics.FOREIGN_PURCHASES.labels(label, handling).inc(count)
            if handling == CONVERTED or currency in self._currencies_told:
                continue
            self._currencies_told.add(currency)
            log.warning(
                "purchases in %s: %s; set PROFILER_CURRENCY_RATES (units per %s) to convert them",
                currency,
                f"amounts counted as if in {currencies.base}"
                if handling == AS_SENT
                else "no rate, so their amounts are left out of spend and the models",
                currencies.base,
            )


def _by_key(records: Sequence[SourceRecord]) -> list[list[SourceRecord]]:
    """The records grouped by key (a user's events share it), in order of first appearance."""
    groups: dict[bytes | None, list[SourceRecord]] = {}
    for record in records:
        groups.setdefault(record.key, []).append(record)
    return list(groups.values())
