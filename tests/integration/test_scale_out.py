"""Three workers in one consumer group share a 6-partition events topic.

DESIGN.md §8: the consumer group is the distributed engine. Each worker here is
a full `BatchWorker` (its own consumer, producer and Redis client) in this event
loop; what they share is the broker's group, the topics and Redis. Every valid,
distinct event must be applied exactly once across them, also when one worker
leaves mid-stream and its partitions move to the others (the new owner replays
from the last commit; watermarks, event-id dedupe and compare-and-set writes
make that replay change nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from profiling.pipeline import BatchResult, FoldedBatch, SourceRecord
from stream import kafka
from stream.producing import send_records
from stream.settings import Settings
from stream.worker import BatchWorker, wall_clock_ms
from tests.integration.kafka_io import committed_offsets, end_offsets, read_topic, wait_until
from tests.integration.test_worker import (
    assert_every_last_message_is_the_stored_profile,
    assert_profiles_match,
    expected_profiles,
    last_messages,
    shop_records,
    stored_profiles,
    views,
)

PARTITIONS = 6
WORKERS = 3
EVENTS = 3000
JOIN_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 30.0

Records = list[tuple[bytes, bytes]]


class Crash(Exception):
    """The process dying, as far as the worker's batch is concerned."""


class CrashBeforeCommit(BatchWorker):
    """Dies at its `crash_at`-th commit: after that batch's Redis write and acks.

    The worker writes batch N+1 while batch N's acks and commit are in flight,
    so when it dies, one or two applied batches never reach their commit nor
    its stats: their applied events are summed in `unfinished_applied`. They
    are in Redis, and the partitions' new owners must skip them on replay.
    """

    crash_at = 2
    unfinished_applied = 0

    async def _write(
        self, records: Sequence[SourceRecord], folded: FoldedBatch, stale: AbstractSet[str]
    ) -> BatchResult:
        result = await super()._write(records, folded, stale)
        self.unfinished_applied += result.outcomes["applied"]
        return result

    async def _finish(
        self,
        records: Sequence[SourceRecord],
        ends: dict[TopicPartition, int],
        result: BatchResult,
        started: float,
    ) -> None:
        await super()._finish(records, ends, result, started)
        self.unfinished_applied -= result.outcomes["applied"]

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.stats.batches + 1 >= self.crash_at:
            raise Crash("killed before the offset commit")
        await super()._commit(offsets)


@dataclass
class Group:
    """Workers of one consumer group, each running as its own task in this loop."""

    settings: Settings
    workers: list[BatchWorker] = field(default_factory=list)
    tasks: list[asyncio.Task[object]] = field(default_factory=list)
    stopped: list[BatchWorker] = field(default_factory=list)

    async def start(self, *kinds: type[BatchWorker]) -> None:
        for kind in kinds:
            worker = kind(self.settings)
            await worker.start()
            self.workers.append(worker)
            self.tasks.append(asyncio.create_task(worker.run()))

    @property
    def running(self) -> list[BatchWorker]:
        return [w for w in self.workers if w not in self.stopped]

    def check_alive(self) -> None:
        """A worker task that died fails the test with its own error, not a timeout."""
        for worker, task in zip(self.workers, self.tasks, strict=True):
            if worker in self.stopped or not task.done() or task.cancelled():
                continue
            if error := task.exception():
                raise error

    def assignments(self) -> list[set[TopicPartition]]:
        return [set(w.assignment.partitions) for w in self.running]

    def settled(self) -> bool:
        """Every running worker owns some partitions, and together each one exactly once."""
        self.check_alive()
        owned = self.assignments()
        every = {TopicPartition(self.settings.topic_events, p) for p in range(PARTITIONS)}
        return all(owned) and sum(map(len, owned)) == PARTITIONS and set().union(*owned) == every

    async def wait_settled(self) -> list[set[TopicPartition]]:
        await wait_until(self.settled, JOIN_TIMEOUT_S, f"{len(self.running)} workers share")
        return self.assignments()

    async def stop(self, worker: BatchWorker) -> None:
        """What SIGTERM does: finish and commit the batch in flight, leave the group."""
        worker.request_stop()
        task = self.tasks[self.workers.index(worker)]
        await asyncio.wait_for(task, timeout=15)
        await worker.close()
        self.stopped.append(worker)

    async def stop_all(self) -> None:
        """Stop every running worker, so that no batch is between its commit and its stats."""
        for worker in self.running:
            await self.stop(worker)

    async def crashed(self, worker: CrashBeforeCommit) -> None:
        """Wait for `worker` to die of its Crash, then drop its connections."""
        task = self.tasks[self.workers.index(worker)]
        await wait_until(task.done, DRAIN_TIMEOUT_S, "the worker's crash")
        assert isinstance(task.exception(), Crash), task.exception()
        self.stopped.append(worker)
        await worker.close()

    async def close(self) -> None:
        """Clean-up after the test, whatever state each worker is in."""
        for worker in self.running:
            worker.request_stop()
            task = self.tasks[self.workers.index(worker)]
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, timeout=15)
            with contextlib.suppress(Exception):
                await worker.close()
            self.stopped.append(worker)

    async def wait_committed(self, ends: dict[int, int]) -> None:
        """Until the group's commits reach the end of every partition."""
        deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
        while (committed := await committed_offsets(self.settings)) != ends:
            self.check_alive()
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"committed {committed}, end {ends}")
            await asyncio.sleep(0.2)


async def produce_in_chunks(
    settings: Settings, records: Records, chunks: int, pause_s: float = 0.1
) -> None:
    """Send while the workers run: several acked sends with pauses between them."""
    size = -(-len(records) // chunks)
    for start in range(0, len(records), size):
        await send_records(settings, records[start : start + size])
        await asyncio.sleep(pause_s)


def assert_applied_exactly_once(
    group: Group, records: Sequence[tuple[bytes, bytes]], lost_applied: int = 0
) -> dict:
    """Applied counts add up to the distinct valid events (plus, uncounted, a crash's batches)."""
    expected = expected_profiles(records)
    n_valid = sum(user["events"] for user in expected.values())
    per_worker = [w.stats.applied for w in group.workers]
    assert sum(per_worker) + lost_applied == n_valid, (
        f"applied per worker {per_worker} + {lost_applied} in batches cut by a crash, "
        f"distinct valid events {n_valid}"
    )
    return expected


async def test_three_workers_share_the_partitions_and_apply_each_event_once(make_settings) -> None:
    settings = await make_settings(partitions=PARTITIONS, heartbeat_s=1.0)
    records = shop_records(EVENTS, malformed=0.02, duplicates=0.03, seed=21)
    group = Group(settings)
    try:
        await group.start(*[BatchWorker] * WORKERS)
        owned = await group.wait_settled()
        assert all(owned)  # each worker got some partitions
        for worker in group.workers:  # a user's commands reach the worker of its events
            owned_tps = worker.consumer.assignment()
            topics = (settings.topic_events, settings.topic_commands)
            events, commands = ({tp.partition for tp in owned_tps if tp.topic == t} for t in topics)
            assert events == commands

        await produce_in_chunks(settings, records, chunks=6)
        await group.wait_committed(await end_offsets(settings, settings.topic_events))
        # Changes held back by the heartbeat go out once due, the workers still running.
        deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
        while True:
            try:
                await assert_every_last_message_is_the_stored_profile(settings)
                break
            except AssertionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        assert sum(w.stats.held_back_published for w in group.workers) > 0
        await group.stop_all()

        expected = assert_applied_exactly_once(group, records)
        assert all(w.stats.applied for w in group.workers), "a worker applied nothing"
        assert_profiles_match(await stored_profiles(settings.redis_url), expected)
        assert sum(w.stats.dead_letters for w in group.workers) > 0
    finally:
        await group.close()


@pytest.mark.parametrize("leave", ["stop", "crash"])
async def test_partitions_of_a_leaving_worker_move_and_nothing_is_applied_twice(
    make_settings, leave: str
) -> None:
    """`stop`: SIGTERM (drain, commit, leave). `crash`: dies before committing a batch it
    wrote, so the partitions' new owners replay that batch, and must change nothing."""
    settings = await make_settings(partitions=PARTITIONS)
    records = shop_records(EVENTS, malformed=0.02, duplicates=0.03, seed=22)
    half = len(records) // 2
    group = Group(settings)
    try:
        first = CrashBeforeCommit if leave == "crash" else BatchWorker
        await group.start(first, *[BatchWorker] * (WORKERS - 1))
        await group.wait_settled()
        leaving = group.workers[0]
        left_partitions = set(leaving.assignment.partitions)

        producing = asyncio.create_task(produce_in_chunks(settings, records[:half], chunks=8))
        if isinstance(leaving, CrashBeforeCommit):
            await group.crashed(leaving)
        else:
            await wait_until(lambda: leaving.stats.applied > 0, DRAIN_TIMEOUT_S, "first batches")
            await group.stop(leaving)  # mid-stream: half of the events are not even sent yet
        await asyncio.wait_for(producing, timeout=DRAIN_TIMEOUT_S)
        await produce_in_chunks(settings, records[half:], chunks=5)

        owned = await group.wait_settled()  # two workers now share all six partitions
        assert left_partitions <= set().union(*owned)
        await group.wait_committed(await end_offsets(settings, settings.topic_events))
        survivors = group.running
        await group.stop_all()

        lost = getattr(leaving, "unfinished_applied", 0)
        expected = assert_applied_exactly_once(group, records, lost)
        assert all(w.stats.applied for w in survivors)
        assert_profiles_match(await stored_profiles(settings.redis_url), expected)
        if leave == "crash":
            assert lost > 0
            assert sum(w.stats.replayed for w in survivors) >= lost
        else:  # a crash leaves the changes it held back for their users' next events
            await assert_every_last_message_is_the_stored_profile(settings)
    finally:
        await group.close()


async def test_a_worker_joins_a_group_whose_earlier_workers_offer_only_round_robin(
    make_settings,
) -> None:
    """A rolling upgrade: workers of an earlier version assign partitions round robin
    only; the group settles on the one strategy every member offers."""
    settings = await make_settings(partitions=2)
    topics = [settings.topic_events, settings.topic_commands]
    earlier = kafka.events_consumer(
        settings, partition_assignment_strategy=(RoundRobinPartitionAssignor,)
    )
    current = kafka.events_consumer(settings)
    consumers = (earlier, current)
    try:
        for consumer in consumers:
            consumer.subscribe(topics)
            await consumer.start()

        async def poll() -> None:
            while not all(c.assignment() for c in consumers):
                await asyncio.gather(*(c.getmany(timeout_ms=100) for c in consumers))

        await asyncio.wait_for(poll(), 30)
        owned = [c.assignment() for c in consumers]
        assert not owned[0] & owned[1] and len(owned[0] | owned[1]) == 2 * len(topics)
    finally:
        for consumer in consumers:
            await consumer.stop()


async def test_until_idle_also_ends_a_worker_the_group_gave_no_partition(make_settings) -> None:
    """More workers than partitions: the one given none has nothing to wait for."""
    settings = await make_settings(partitions=1)
    await send_records(settings, shop_records(200, malformed=0, duplicates=0, seed=26))
    workers = [BatchWorker(settings), BatchWorker(settings)]
    try:
        for worker in workers:
            await worker.start()
        runs = [worker.run(until_idle_s=1.0) for worker in workers]
        stats = await asyncio.wait_for(asyncio.gather(*runs), 60)
    finally:
        for worker in workers:
            await worker.close()
    assert sorted(s.records for s in stats) == [0, 200]


async def test_a_worker_hands_off_the_held_back_changes_of_the_partitions_it_loses(
    make_settings,
) -> None:
    """A second worker joins: the first publishes at once the changes it held back for the
    users of the partitions that move, and keeps waiting for the heartbeat on the others."""
    settings = await make_settings(partitions=PARTITIONS, heartbeat_s=60.0)
    users = [f"quiet-{i}" for i in range(60)]
    group = Group(settings)
    try:
        await group.start(BatchWorker)
        await group.wait_settled()
        first = group.workers[0]
        await send_records(settings, views(users, 1, wall_clock_ms()))  # new: published
        await wait_until(lambda: first.stats.applied == len(users), DRAIN_TIMEOUT_S, "round 1")
        await send_records(settings, views(users, 2, wall_clock_ms()))  # counters only
        await wait_until(lambda: len(first.held_back) == len(users), DRAIN_TIMEOUT_S, "round 2")
        partition_of = {user: first.held_back._due[user][0] for user in users}
        assert first.stats.held_back_published == 0

        await group.start(BatchWorker)
        await group.wait_settled()
        kept = {tp.partition for tp in first.assignment.partitions}
        moved = {user for user, partition in partition_of.items() if partition not in kept}
        assert moved and len(moved) < len(users)
        await wait_until(
            lambda: first.stats.held_back_published >= len(moved), DRAIN_TIMEOUT_S, "hand-off"
        )
        assert first.stats.held_back_published == len(moved)
        assert set(first.held_back._due) == set(users) - moved  # the heartbeat is not due
        updates = await read_topic(settings.kafka_bootstrap, settings.topic_updates)
        last = last_messages(updates)
        assert {user for user, body in last.items() if body["events"] == 2} == moved
    finally:
        await group.close()
