"""What a worker commits and where it resumes, and which failures it retries."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    BrokerNotAvailableError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from redis.exceptions import (
    ConnectionError,
    DataError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
)

import stream.worker
from profiling.encoder import EncoderUnavailableError
from profiling.errors import ProfilerError, StoreConflictError
from profiling.models import ProfileModels
from profiling.pipeline import Record
from stream.settings import Settings
from stream.worker import (
    BatchWorker,
    _Assignment,
    fetched_ends,
    labels_positions,
    ledger_ttl_ms,
    next_offsets,
)


def test_next_offsets_per_partition_and_topic() -> None:
    records = [
        Record("events", 0, 7, b"u", b"{}"),
        Record("events", 1, 3, b"u", b"{}"),
        Record("events", 0, 5, b"u", b"{}"),  # out of order: the highest still counts
        Record("labels", 0, 41, b"u", b"{}"),
        Record("events", 0, 9, b"u", b"{}"),
    ]
    assert next_offsets(records) == {
        TopicPartition("events", 0): 10,
        TopicPartition("events", 1): 4,
        TopicPartition("labels", 0): 42,
    }
    assert next_offsets([]) == {}


def test_fetched_ends_are_the_next_offsets_of_a_fetch() -> None:
    fetched = {
        TopicPartition("events", 0): [Record("events", 0, o, b"u", b"{}") for o in (5, 7, 9)],
        TopicPartition("events", 1): [Record("events", 1, 3, b"u", b"{}")],
        TopicPartition("labels", 0): [Record("labels", 0, 41, b"u", b"{}")],
        TopicPartition("labels", 1): [],
    }
    records = [record for part in fetched.values() for record in part]
    assert (
        fetched_ends(fetched)
        == next_offsets(records)
        == {
            TopicPartition("events", 0): 10,
            TopicPartition("events", 1): 4,
            TopicPartition("labels", 0): 42,
        }
    )


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConnectionError("reset by peer"), True),
        (TimeoutError("no reply"), True),
        (ReadOnlyError("a replica now"), True),  # a fail-over
        (OutOfMemoryError("OOM command not allowed"), True),
        (SlotNotCoveredError("slot 42 not covered"), True),  # resharding
        (ResponseError("BUSY Redis is busy running a script"), True),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots"), True),
        (ResponseError("NOREPLICAS Not enough good replicas to write"), True),
        (ResponseError("an error nobody foresaw"), True),  # stall rather than lose events
        (ResponseError("WRONGTYPE Operation against a key"), False),
        (ResponseError("Error running script (call to f_1): @user_script:4: bad argument"), False),
        (ResponseError("Error running script (call to f_1): @user_script:4: MISCONF"), True),
        (DataError("invalid input"), False),
        (RedisClusterException("EVALSHA - all keys must map to the same key slot"), False),
        (RedisClusterException("Redis Cluster cannot be connected"), True),
    ],
)
def test_what_redis_refuses_is_not_retried_what_may_pass_is(
    error: Exception, retried: bool
) -> None:
    assert_retried_once_or_raised(error, retried, "redis")


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (StoreConflictError("3 users still conflicting after retries"), True),
        (EncoderUnavailableError("device cuda:1 (PROFILER_DEVICE) is not available"), False),
        (ProfilerError("a contract broken"), False),
        (KafkaConnectionError("no connection"), True),
        (NotLeaderForPartitionError(), True),  # a leader moving
        (KafkaTimeoutError(), True),  # a broker away: aiokafka leaves it unmarked
        (BrokerNotAvailableError(), True),
        (RecordTooLargeError("larger than max_request_size"), False),
        (TopicAuthorizationFailedError(), False),
        # aiokafka marks it retriable, yet it raises it only once it waited for the topic
        # (deleted, or never created): retried, the worker waited for ever.
        (UnknownTopicOrPartitionError(), False),
    ],
)
def test_only_what_waiting_may_cure_is_retried(error: Exception, retried: bool) -> None:
    """A step failing on what cannot pass was retried for ever: the worker stalled on
    it, `/ready` failing, where it should apply the batch apart or stop."""
    assert_retried_once_or_raised(error, retried, "kafka")


def assert_retried_once_or_raised(error: Exception, retried: bool, component: str) -> None:
    """`_retrying` over a step failing once with `error`: tried again, or raised at once."""
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return "done"

    async def run() -> str:  # the worker's clients are made in a running loop
        settings = Settings(encoder_model="none", models=False, redis_url="redis://127.0.0.1:1")
        return await BatchWorker(settings)._retrying(component, attempt)

    if retried:
        assert asyncio.run(run()) == "done" and len(calls) == 2
    else:
        with pytest.raises(type(error)):
            asyncio.run(run())
        assert len(calls) == 1


def test_labels_partitions_are_read_from_after_the_last_label_the_models_learnt() -> None:
    """Past the snapshot's offsets, labels committed by a worker that died before its next
    snapshot are read again; a partition the models learnt nothing from, from its start."""
    models = ProfileModels(offsets={"labels:0": 41, "labels:2": 0, "events:1": 99})
    assigned = {TopicPartition("labels", p) for p in range(3)} | {
        TopicPartition("events", 1),
        TopicPartition("commands", 0),
    }
    assert labels_positions("labels", assigned, models) == {
        TopicPartition("labels", 0): 42,
        TopicPartition("labels", 1): 0,
        TopicPartition("labels", 2): 1,
    }
    assert labels_positions("labels", assigned, ProfileModels()) == {
        TopicPartition("labels", p): 0 for p in range(3)
    }


def test_every_assignment_positions_its_labels_partitions() -> None:
    """Also after a rebalance: the worker's own models may have learnt more or less of a
    partition than the worker that committed it."""
    seen: list[set[TopicPartition]] = []
    assignment = _Assignment("events", {}, lambda assigned: seen.append(set(assigned)))
    first = {TopicPartition("events", 0), TopicPartition("labels", 0)}
    asyncio.run(assignment.on_partitions_assigned(first))
    asyncio.run(assignment.on_partitions_revoked(first))
    asyncio.run(assignment.on_partitions_assigned({TopicPartition("labels", 1)}))
    assert seen == [first, {TopicPartition("labels", 1)}]


def test_partitions_a_rebalance_gives_back_are_not_handed_off() -> None:
    """Held-back changes are handed off only for the partitions that went elsewhere."""
    assignment = _Assignment("events", {})
    tps = {TopicPartition("events", p) for p in range(3)} | {TopicPartition("commands", 0)}
    asyncio.run(assignment.on_partitions_assigned(tps))
    asyncio.run(assignment.on_partitions_revoked(tps))  # every partition, as a rebalance does
    assert assignment.revoked == {0, 1, 2}
    asyncio.run(assignment.on_partitions_assigned({TopicPartition("events", 2)}))
    assert assignment.revoked == {0, 1}


def test_only_partitions_new_to_the_worker_are_read_from_the_held_back_ledger() -> None:
    assignment = _Assignment("events", {})
    tps = {TopicPartition("events", p) for p in range(3)} | {TopicPartition("commands", 0)}
    asyncio.run(assignment.on_partitions_assigned(tps))
    assert assignment.gained == {0, 1, 2}
    assignment.gained.clear()  # read
    asyncio.run(assignment.on_partitions_revoked(tps))
    asyncio.run(assignment.on_partitions_assigned({TopicPartition("events", p) for p in (2, 3)}))
    assert assignment.gained == {3}  # 2 came back: its users are still in the worker's index
    assignment.gained.clear()


def test_a_partition_given_back_before_the_worker_handed_it_off_is_read_again() -> None:
    """Another worker may have held users back on it meanwhile, and crashed."""
    assignment = _Assignment("events", {})
    owned = {TopicPartition("events", p) for p in (0, 1)}
    asyncio.run(assignment.on_partitions_assigned(owned))
    assignment.gained.clear()
    asyncio.run(assignment.on_partitions_revoked(owned))
    asyncio.run(assignment.on_partitions_assigned({TopicPartition("events", 0)}))
    assert assignment.revoked == {1} and not assignment.gained  # 1 not yet handed off
    asyncio.run(assignment.on_partitions_revoked({TopicPartition("events", 0)}))
    asyncio.run(assignment.on_partitions_assigned(owned))
    assert assignment.gained == {1} and not assignment.revoked


def test_the_backoff_outlasts_a_thousand_failed_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    """`0.05 * 2**attempt` overflowed a float at attempt 1,024 (about 85 minutes of an
    outage at the 5 s cap): the batch then went the way of a bug, dead-lettered."""
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) <= 1100:
            raise ConnectionError("connection refused")
        return "done"

    async def no_wait(_delay: float) -> None:
        pass

    async def run() -> str:
        settings = Settings(encoder_model="none", models=False, redis_url="redis://127.0.0.1:1")
        worker = BatchWorker(settings)
        monkeypatch.setattr(stream.worker.asyncio, "sleep", no_wait)
        return await worker._retrying("redis", attempt)

    assert asyncio.run(run()) == "done" and len(calls) == 1101


@pytest.mark.parametrize("error", [SlotNotCoveredError("slot 42 not covered"), ValueError("bug")])
def test_a_failed_periodic_snapshot_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    """A snapshot taken while a cluster reshards raised out of the batch's task, and the
    next batch stopped the worker."""

    async def failing(*_args: object) -> bool:
        raise error

    async def run() -> None:
        settings = Settings(encoder_model="none", redis_url="redis://127.0.0.1:1")
        worker = BatchWorker(settings)
        worker._snapshots_allowed = True
        worker._checkpointed = -1e9  # due
        monkeypatch.setattr(stream.worker, "save_models", failing)
        await worker._checkpoint_if_due()

    asyncio.run(run())
    assert f"model snapshot failed (next try in 60.0s): {type(error).__name__}" in caplog.text


def test_the_held_back_ledger_outlives_the_heartbeat() -> None:
    assert ledger_ttl_ms(Settings(heartbeat_s=60, held_back_ttl_s=600)) == 600_000
    assert ledger_ttl_ms(Settings(heartbeat_s=900.5, held_back_ttl_s=600)) == 900_500
    assert ledger_ttl_ms(Settings(heartbeat_s=900, held_back_ttl_s=0)) == 0  # kept
