"""Partitions moving between two workers, at random moments, on a real Redis.

Two workers, each with its own profile cache, share one Redis and a log of
three partitions. Each does what `BatchWorker.run` does: it takes a batch
from the partitions it owns, folds it while its previous batch's write is
still under way (the cache holds the profiles as sent), then writes it,
passing on the users the previous write had to fold again (`stale`), and
commits a batch's offsets only after its write, and only for partitions it
still owns. At random moments a partition moves to the other worker, which
starts again from the last committed offset (replaying what was applied but
not committed), while the old owner may still fold and write what it took.

A write the other worker keeps beating raises `StoreConflictError` after its
retries; like the worker's own retry loop, the batch's write is then run again.
Whatever the interleaving, every distinct valid event is applied exactly
once: each user's stored counts equal a recount of the log. Removing the
partition watermark's check or keeping a refused user in the cache makes these
cases fail; the `updated` stamp and `stale` guard against a profile erased and
written again, which moving partitions never does (test_profile_cache.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from profiling.errors import StoreConflictError
from profiling.events import Event, decode_event
from profiling.pipeline import BatchResult, FoldedBatch, Record, Stages, fold_batch
from profiling.profile import ProfileParams
from stream.model_setup import build_models
from stream.redis_store import RedisProfileStore
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator

T0 = 1_700_000_000_000
TOPIC = "behavior-events"
PARTITIONS = 3
# A window far shorter than a user's events: a replay is dropped by the partition
# watermark, not by remembering the id (re-sent ids are the window's own tests).
PARAMS = ProfileParams(dedupe_window=16)


def partition_logs(n: int, users: int, seed: int) -> list[list[Record]]:
    """A shop's records (1 % malformed, none re-sent) keyed into per-partition logs."""
    shop = ShopGenerator(users=users, seed=seed, start_ms=T0, end_ms=T0 + 3_600_000)
    logs: list[list[Record]] = [[] for _ in range(PARTITIONS)]
    for key, value in shop.records(n, 0.01, 0.0):
        log = logs[zlib.crc32(key) % PARTITIONS]
        log.append(Record(TOPIC, zlib.crc32(key) % PARTITIONS, len(log), key, value))
    return logs


def recount(logs: list[list[Record]]) -> dict[str, Counter[str]]:
    """Per user: distinct valid events, in all and per type."""
    seen: dict[str, dict[str, str]] = defaultdict(dict)
    for log in logs:
        for record in log:
            verdict = decode_event(record.value or b"", T0 + 86_400_000)
            if isinstance(verdict, Event) and record.key == verdict.user_id.encode():
                seen[verdict.user_id][verdict.event_id] = verdict.type
    return {user: Counter(kinds.values()) for user, kinds in seen.items()}


@dataclass
class Writing:
    """A batch's write under way, the batch, and its next offsets per partition."""

    task: asyncio.Task[BatchResult]
    folded: FoldedBatch
    ends: dict[int, int]


@dataclass
class Worker:
    """One worker's consumer positions, its store, and the batch it is writing."""

    store: RedisProfileStore
    stages: Stages
    positions: dict[int, int] = field(default_factory=dict)  # owned partition -> next offset
    writing: Writing | None = None


@dataclass
class Group:
    """The consumer group: who owns each partition, and the committed offsets."""

    logs: list[list[Record]]
    workers: list[Worker]
    clock: Callable[[], int]
    committed: list[int] = field(default_factory=lambda: [0] * PARTITIONS)
    owner: list[int] = field(default_factory=lambda: [0] * PARTITIONS)

    async def take(self, w: int, rng: random.Random) -> bool:
        """Fold the next batch of worker `w` while its last write runs; start its write."""
        worker = self.workers[w]
        batch: list[Record] = []
        ends: dict[int, int] = {}
        for p, at in worker.positions.items():
            records = self.logs[p][at : at + rng.randint(1, 40)]
            if records:
                batch += records
                ends[p] = worker.positions[p] = at + len(records)
        if not batch:
            return False
        folded = await fold_batch(batch, worker.store, PARAMS, self.clock, worker.stages)
        stale = (await self.finish(w)).refolded
        worker.writing = Writing(asyncio.create_task(folded.write(stale=stale)), folded, ends)
        await asyncio.sleep(0)  # packed and sent; its reply not read yet
        return True

    async def finish(self, w: int) -> BatchResult:
        """Wait for worker `w`'s write, then commit its offsets where it still owns them."""
        worker = self.workers[w]
        writing, worker.writing = worker.writing, None
        if writing is None:
            return BatchResult()
        task = writing.task
        while True:
            try:
                result = await task
                break
            except StoreConflictError:  # the other worker kept winning: again, as the worker does
                task = asyncio.create_task(writing.folded.write())
        for p, end in writing.ends.items():
            if self.owner[p] == w:
                self.committed[p] = max(self.committed[p], end)
        return result

    def move(self, p: int) -> None:
        """Partition `p` to the other worker, from the last committed offset."""
        old, new = self.owner[p], 1 - self.owner[p]
        self.owner[p] = new
        self.workers[old].positions.pop(p, None)
        self.workers[new].positions[p] = self.committed[p]

    def drained(self) -> bool:
        return all(
            self.workers[self.owner[p]].positions.get(p) == len(log)
            for p, log in enumerate(self.logs)
        )


def ticking(start: int = T0 + 3_600_000) -> Callable[[], int]:
    """A clock that moves 1 ms per reading: every write has a stamp of its own."""
    now = [start]

    def clock() -> int:
        now[0] += 1
        return now[0]

    return clock


def coarse(start: int = T0 + 3_600_000, readings: int = 50) -> Callable[[], int]:
    """A clock that moves 1 ms every `readings` readings: many writes share a stamp,
    as writes within one millisecond do, so the version alone must keep them apart."""
    count = [0]

    def clock() -> int:
        count[0] += 1
        return start + count[0] // readings

    return clock


async def play(group: Group, rng: random.Random, steps: int = 400) -> int:
    """Random takes, finished writes and partition moves; then worker 0 takes the rest.

    Returns the number of moves.
    """
    for p in range(PARTITIONS):
        group.owner[p] = rng.randrange(2)
        group.workers[group.owner[p]].positions[p] = 0
    moves = 0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.12:
            group.move(rng.randrange(PARTITIONS))
            moves += 1
        elif roll < 0.25:
            await group.finish(rng.randrange(2))
        else:
            await group.take(rng.randrange(2), rng)
    for w in range(2):
        await group.finish(w)
    for p in range(PARTITIONS):
        if group.owner[p] != 0:
            group.move(p)
    while await group.take(0, rng):
        pass
    await group.finish(0)
    return moves


CASES = [(seed, clock, seed % 4 == 0) for seed in range(1, 9) for clock in ("ticking", "coarse")]


@pytest.mark.parametrize(("seed", "clock", "models"), CASES)
async def test_every_event_is_applied_once_however_partitions_move(
    redis_client: aioredis.Redis, seed: int, clock: str, models: bool
) -> None:
    logs = partition_logs(1_500, users=60, seed=seed)
    settings = Settings()
    workers = [
        Worker(
            RedisProfileStore(redis_client, cache_users=1_000),
            Stages(models=build_models(settings) if models else None),
        )
        for _ in range(2)
    ]
    group = Group(logs, workers, ticking() if clock == "ticking" else coarse())
    try:
        moves = await play(group, random.Random(seed))
    finally:  # a failed run leaves no write running into the next test's Redis
        for worker in workers:
            if worker.writing is not None:
                worker.writing.task.cancel()
                with contextlib.suppress(BaseException):
                    await worker.writing.task
    assert group.drained()
    assert moves > 20

    expected = recount(logs)
    stored = await RedisProfileStore(redis_client).load(sorted(expected))
    for user, kinds in expected.items():
        profile = stored[user]
        assert profile.events == sum(kinds.values()), user
        assert Counter(profile.counts) == kinds, user
