"""Prometheus metrics of a worker, in one registry served at `/metrics`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

import numpy as np
from aiokafka import TopicPartition
from prometheus_client import (
    GC_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily

from profiling.embedding_cache import LookupTotals

REGISTRY = CollectorRegistry(auto_describe=True)
# The process's memory and CPU, and the garbage collector's collections by generation
# (`process_*`, `python_gc_*`): RSS should stay flat, and young collections rare.
REGISTRY.register(PROCESS_COLLECTOR)
REGISTRY.register(GC_COLLECTOR)

EVENTS = Counter(
    "profiler_events",
    "Records consumed from the events topic, by event type and outcome",
    ["type", "outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "profiler_dead_letters", "Records sent to the DLQ, by error code", ["error"], registry=REGISTRY
)
FOREIGN_PURCHASES = Counter(
    "profiler_foreign_purchases",
    "Purchases applied in a currency other than PROFILER_CURRENCY, by currency (one of "
    "PROFILER_CURRENCY_RATES, else other) and what their amount did: converted, as_sent "
    "(no rates set) or left_out (no rate for it)",
    ["currency", "amount"],
    registry=REGISTRY,
)
# The `currency` of purchases in a currency without a rate: events may name any three
# letters (17,576 series), the rates only what the operator set.
OTHER_CURRENCY: Final = "other"
BATCH_SIZE = Histogram(
    "profiler_batch_records",
    "Records per consumer batch",
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000),
    registry=REGISTRY,
)
# Up to a minute: a full batch of texts no cache holds waits on a CPU encoder for
# seconds to tens of seconds (5,000 at about 400 texts/s: 12.5 s), and a batch past
# the last bound is only known to be slow, not how slow.
BATCH_SECONDS = Histogram(
    "profiler_batch_seconds",
    "Time from a batch's fetch to its offset commit",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)


class BatchHistogram:
    """A histogram that takes a batch's values at once: every value counted, in one numpy
    step (prometheus-client's `observe` takes one value, about a microsecond each)."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.array(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last: above them all
        self._sum = 0.0
        registry.register(self)

    def observe_all(self, values: Sequence[float] | np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        # Bucket i counts bounds[i-1] < value <= bounds[i]: Prometheus's `le`.
        at = np.searchsorted(self._bounds, values, side="left")
        self._counts += np.bincount(at, minlength=len(self._counts))
        self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative = np.cumsum(self._counts).tolist()
        bounds = [repr(bound) for bound in self._bounds.tolist()]  # as prometheus-client: "1.0"
        family.add_metric(
            [], [*zip(bounds, cumulative, strict=False), ("+Inf", cumulative[-1])], self._sum
        )
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


EVENT_TO_STORE_SECONDS = BatchHistogram(
    "profiler_event_to_store_seconds",
    "Event ts to its profile write, every applied event (includes producer clock skew "
    "and replay age)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
    registry=REGISTRY,
)
PROFILES_WRITTEN = Counter(
    "profiler_profiles_written",
    "Profile writes to the store that landed: batches' folds, merges, and the marks of "
    "held-back change messages as published",
    registry=REGISTRY,
)
CHANGES_PUBLISHED = Counter(
    "profiler_changes_published", "Profile change messages published", registry=REGISTRY
)
HELD_BACK_PUBLISHED = Counter(
    "profiler_held_back_changes_published",
    "Change messages the heartbeat held back, published once due or when handed off",
    registry=REGISTRY,
)
HELD_BACK_USERS = Gauge(
    "profiler_held_back_users",
    "Users whose change message the heartbeat holds back, waiting on this worker",
    registry=REGISTRY,
)
RETRIES = Counter(
    "profiler_retries",
    "Batch attempts retried after a store or broker error, by component",
    ["component"],
    registry=REGISTRY,
)
COMMIT_FAILURES = Counter(
    "profiler_commit_failures",
    "Offset commits refused (after a rebalance); the batch is replayed idempotently",
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "profiler_assigned_partitions", "Partitions of the events topic owned", registry=REGISTRY
)
EMBEDDINGS = Counter(
    "profiler_embeddings",
    "Distinct texts (kind text) and items of untitled item events (kind item) looked up "
    "per batch, by where the vector came from: lru (in process), shared (Redis), encoded "
    "(encoder call: texts), none (no item vector remembered)",
    ["kind", "source"],
    registry=REGISTRY,
)
EMBEDDING_HIT_RATIO = Gauge(
    "profiler_embedding_cache_hit_ratio",
    "Share of text lookups since start that needed no encoder call",
    registry=REGISTRY,
)
PROFILE_LOADS = Counter(
    "profiler_profile_loads",
    "Stored profiles batches folded their events into, by where they came from: "
    "cache (kept in process after the worker wrote them) or redis; not the reads of "
    "held-back change messages or of commands, which always read Redis",
    ["source"],
    registry=REGISTRY,
)
ENCODER_CALLS = Counter(
    "profiler_encoder_calls", "Batches that ran the encoder on cache misses", registry=REGISTRY
)
ENCODER_SECONDS = Counter(
    "profiler_encoder_seconds",
    "Seconds batches waited on the encoder: tokenising, forward passes, copying back",
    registry=REGISTRY,
)


ALERTS = Counter("profiler_fraud_alerts", "Fraud alerts published", registry=REGISTRY)
RISK_SCORES = BatchHistogram(
    "profiler_risk_score",
    "Risk scores of purchases and logins",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
    registry=REGISTRY,
)
LABELS = Counter(
    "profiler_fraud_labels",
    "Fraud label records, by outcome: learnt, duplicate (the same label learnt before), "
    "unknown (features expired or never scored), stale_features (features kept by a "
    "version that scored another number of features: not learnt), skipped (learnt before "
    "the restored snapshot), invalid (dead-lettered)",
    ["outcome"],
    registry=REGISTRY,
)
COMMANDS = Counter(
    "profiler_profile_commands",
    "profile-commands records, by command (erase, merge, invalid) and outcome: erased (a "
    "profile removed), merged (a profile folded into another), absent (no profile: only "
    "the marker written), repeated (done before: a replay), dead_lettered",
    ["command", "outcome"],
    registry=REGISTRY,
)
MODEL_DRIFT = Counter(
    "profiler_model_drift",
    "Drift detected by ADWIN in a model's output stream",
    ["model"],
    registry=REGISTRY,
)
SEGMENT_MOVES = Counter(
    "profiler_segment_moves", "Users moved to another segment", registry=REGISTRY
)
MODEL_SNAPSHOTS = Counter(
    "profiler_model_snapshots",
    "Model snapshots, by outcome: saved, restored, refused",
    ["outcome"],
    registry=REGISTRY,
)


def observe_embeddings(before: LookupTotals, after: LookupTotals) -> None:
    """Count one batch's lookups from the cumulative totals before and after it."""
    new = LookupTotals(*(now - then for now, then in zip(after, before, strict=True)))
    EMBEDDINGS.labels("text", "lru").inc(new.text_lru)
    EMBEDDINGS.labels("text", "shared").inc(new.text_shared)
    EMBEDDINGS.labels("text", "encoded").inc(new.text_encoded)
    EMBEDDINGS.labels("item", "lru").inc(new.item_lru)
    EMBEDDINGS.labels("item", "shared").inc(new.item_shared)
    EMBEDDINGS.labels("item", "none").inc(new.item_none)
    if new.text_encoded:
        ENCODER_CALLS.inc()
    texts = after.text_lru + after.text_shared + after.text_encoded
    if texts:  # an item found needs no encoder call, yet its text lookup is not saved
        EMBEDDING_HIT_RATIO.set(1 - after.text_encoded / texts)


CONSUMER_LAG = Gauge(
    "profiler_consumer_lag",
    "Records behind the fetch high watermark, per owned partition",
    ["topic", "partition"],
    registry=REGISTRY,
)


def observe_lag(lag: Mapping[TopicPartition, int], unknown: Iterable[TopicPartition] = ()) -> None:
    """Set the lag of the partitions in `lag`; drop the series of those whose lag is not
    known now (`unknown`: their position query timed out, or their end is not fetched).

    A series left at its last value would look current while the partition falls
    behind; an absent one is what Prometheus calls stale, and `absent()` alerts see.
    """
    for tp, behind in lag.items():
        CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(behind)
    forget_partitions(unknown)


def forget_partitions(partitions: Iterable[TopicPartition]) -> None:
    """Drop the lag series of partitions this worker no longer owns."""
    for tp in partitions:
        with contextlib.suppress(KeyError):
            CONSUMER_LAG.remove(tp.topic, str(tp.partition))


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)
