"""What one event costs at the batch sizes a worker sees while keeping up with a stream.

A worker draining a backlog takes 5,000 events a batch, about 17 per user it
writes; one keeping up with a steady stream takes what arrived during the last
batch, a few hundred events, nearly one per user. Per-user work (loading,
folding, writing a profile) then dominates. This runs the worker's batch step
(`apply_batch`, the default models on, no vectors) in process against a local
redis-server, on a synthetic shop whose first 40,000 events are applied in
batches of 2,500 (the users exist), then the next 50,000 in batches of each
size, with the worker's profile cache (`PROFILER_PROFILE_CACHE_USERS`) and
without it. Per event: wall time, this process's CPU (the worker's share) and
redis-server's time in scripts (INFO commandstats).

`--vectors on` adds the interest-vector stage with a warm embedding cache:
every text of the run is embedded before the measured batches (by the hashing
encoder, so no model loads; a warm cache calls no encoder either way), with
the worker's shared Redis cache behind the in-process one.

    python bench/batch_cost.py
    python bench/batch_cost.py --sizes 130 600 --repeat 3
    python bench/batch_cost.py --sizes 5000 --caches 20000 --models off --vectors off on
    python bench/batch_cost.py --sizes 130 600 --caches 20000 --breakdown
    python bench/batch_cost.py --sizes 130 300 600 --caches 20000 --writes sequential overlapped

`--writes overlapped` folds each batch while the previous batch's write runs,
as the worker does (`sequential`, the default: each batch written before the
next is folded).

`--breakdown` (sequential writes only) also splits each run's worker CPU per
profile write into the batch step's stages (validation, load, the aggregates
fold, vectors, models, save; the rest is grouping, outcomes and the event
loop), by timing those functions as they run: wall time for the ones that
never wait (the fold's two clock reads per user add about 0.1 µs), the
thread's CPU time for the ones that await Redis, out of the event loop
thread's CPU time (OpenBLAS's helper threads, busy with text and models both
on, are left out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from itertools import product
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

import stream  # noqa: F401  first: numpy then loads as in the worker (one OpenBLAS thread)

# isort: split
from drain import SHOP_RATES, write_report  # bench/drain.py

from profiling import pipeline
from profiling.embedding_cache import EmbeddingLRU, embed_events
from profiling.encoder import HashingEncoder
from profiling.events import Event, decode_event
from profiling.interests import InterestModel
from profiling.models import ProfileModels
from profiling.pipeline import BatchResult, FoldedBatch, Record, Stages, fold_batch
from stream.devstack import LocalRedis
from stream.interest_setup import RedisEmbeddingCache
from stream.model_setup import build_models
from stream.redis_store import RedisProfileStore, connect
from stream.runner import settle_heap
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator
from stream.worker import profile_params

RESULTS = Path(__file__).parent / "results"
WARM_EVENTS = 40_000
MEASURED_EVENTS = 50_000
START_MS = 1_764_000_000_000


def shop_records(count: int = WARM_EVENTS + MEASURED_EVENTS) -> list[Record]:
    shop = ShopGenerator(users=20_000, seed=5, start_ms=START_MS, end_ms=START_MS + 30_000)
    return [
        Record("behavior-events", zlib.crc32(key) % 6, offset, key, value)
        for offset, (key, value) in enumerate(shop.records(count))
    ]


Step = Callable[[Sequence[Record]], Awaitable[FoldedBatch]]  # `write()` what it returns


async def warmed_step(
    url: str,
    records: Sequence[Record],
    warm_events: int,
    cache_users: int,
    models: bool,
    *,
    vectors: bool = False,
) -> tuple[aioredis.Redis, Step]:
    """The worker's batch step on an empty Redis, after `records[:warm_events]` in 2,500s.

    Returns the client (close it) and the step's first half, `fold_batch`
    (`.write()` its result), the users of the warm-up known (and, with
    `vectors`, the vector of every text in `records` cached).
    """
    client = connect(url)
    await client.flushall()
    settings = Settings(redis_url=url, profile_cache_users=cache_users, currency_rates=SHOP_RATES)
    store = RedisProfileStore(client, cache_users=settings.profile_cache_users)
    interests = await warm_interests(records, client, START_MS + 40_000) if vectors else None
    stages = Stages(interests, False, build_models(settings) if models else None)
    params = profile_params(settings)

    def clock() -> int:
        return START_MS + 40_000

    async def step(batch: Sequence[Record]) -> FoldedBatch:
        return await fold_batch(batch, store, params, clock, stages)

    for start in range(0, warm_events, 2_500):
        await (await step(records[start : start + 2_500])).write()
    settle_heap(Settings().batch_max_events)
    return client, step


async def warm_interests(
    records: Sequence[Record], client: aioredis.Redis, now_ms: int
) -> InterestModel:
    """The vector stage with every text of `records` already in its caches."""
    model = InterestModel(HashingEncoder(), EmbeddingLRU(), RedisEmbeddingCache(client))
    events = [e for r in records if isinstance(e := decode_event(r.value or b"", now_ms), Event)]
    await embed_events(events, model.encoder, model.lru, model.shared, ttl_s=model.cache_ttl_s)
    return model


class StageClock:
    """Time spent in each stage of the batch step while active (see `--breakdown`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> StageClock:
        self._sync(pipeline, "decode_batch", "validate")
        self._sync(pipeline, "apply_deliveries", "fold")
        self._sync(ProfileModels, "update", "models")
        self._async(InterestModel, "update", "vectors")
        self._async(RedisProfileStore, "load", "load")
        self._async(RedisProfileStore, "save", "save")
        return self

    def __exit__(self, *_: object) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)

    def _sync(self, owner: Any, name: str, stage: str) -> None:
        original, seconds, clock = getattr(owner, name), self.seconds, time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[stage] = seconds.get(stage, 0.0) + clock() - started

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def _async(self, owner: Any, name: str, stage: str) -> None:
        original, seconds, clock = getattr(owner, name), self.seconds, time.thread_time

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return await original(*args, **kwargs)
            finally:
                seconds[stage] = seconds.get(stage, 0.0) + clock() - started

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)


async def one_run(
    url: str,
    records: list[Record],
    size: int,
    cache_users: int,
    *,
    models: bool = True,
    vectors: bool = False,
    breakdown: bool = False,
    overlap: bool = False,
) -> dict[str, Any]:
    client, step = await warmed_step(
        url, records, WARM_EVENTS, cache_users, models, vectors=vectors
    )
    await client.config_resetstat()
    measured = records[WARM_EVENTS:]
    n = len(measured)
    clock = StageClock()
    with clock if breakdown else contextlib.nullcontext():
        wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
        users = await apply_all(step, [measured[i : i + size] for i in range(0, n, size)], overlap)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        own = time.thread_time() - own
    scripts = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    await client.aclose()
    gc.unfreeze()
    return {
        "batch": size,
        "writes": "overlapped" if overlap else "sequential",
        "profile_cache": cache_users,
        "models": models,
        "vectors": vectors,
        "events_per_user_write": round(n / users, 2),
        "wall_us_per_event": round(wall / n * 1e6, 1),
        "worker_cpu_us_per_event": round(cpu / n * 1e6, 1),
        "redis_scripts_us_per_event": round(scripts.get("usec", 0) / n, 1),
        **({"per_write_cpu_us": per_write(clock.seconds, own, users)} if breakdown else {}),
    }


async def apply_all(step: Step, batches: Sequence[Sequence[Record]], overlap: bool) -> int:
    """Apply the batches in order; profiles written. `overlap`: as the worker does, each
    batch folded while the previous one's write runs (sent, its reply not yet read)."""
    users = 0
    writing: asyncio.Task[BatchResult] | None = None
    for batch in batches:
        folded = await step(batch)
        if not overlap:
            users += (await folded.write()).users_written
            continue
        stale: AbstractSet[str] = frozenset()
        if writing is not None:
            done = await writing
            users += done.users_written
            stale = done.refolded
        writing = asyncio.create_task(folded.write(stale=stale))
        await asyncio.sleep(0)
    if writing is not None:
        users += (await writing).users_written
    return users


def per_write(stages: dict[str, float], cpu_s: float, writes: int) -> dict[str, float]:
    """µs per profile write of each stage, and of the rest of the event loop thread's CPU."""
    split = {stage: round(s / writes * 1e6, 1) for stage, s in sorted(stages.items())}
    split["other"] = round((cpu_s - sum(stages.values())) / writes * 1e6, 1)
    split["total"] = round(cpu_s / writes * 1e6, 1)
    return split


async def run(
    sizes: list[int],
    repeat: int,
    caches: list[int],
    models: list[bool],
    *,
    vectors: list[bool],
    breakdown: bool = False,
    overlaps: Sequence[bool] = (False,),
) -> list[dict[str, Any]]:
    records = shop_records()
    rows: list[dict[str, Any]] = []
    with LocalRedis() as redis_server:
        for _ in range(repeat):  # interleaved: each round runs every configuration once
            for size in sizes:
                for cache_users in caches:
                    for with_models, with_vectors, overlap in product(models, vectors, overlaps):
                        row = await one_run(
                            redis_server.url,
                            records,
                            size,
                            cache_users,
                            models=with_models,
                            vectors=with_vectors,
                            breakdown=breakdown,
                            overlap=overlap,
                        )
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    return rows


def best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration the run with the least worker CPU (the least disturbed)."""
    chosen: dict[tuple[int, int, bool, bool, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["batch"], row["profile_cache"], row["models"], row["vectors"], row["writes"])
        if (
            key not in chosen
            or row["worker_cpu_us_per_event"] < chosen[key]["worker_cpu_us_per_event"]
        ):
            chosen[key] = row
    return list(chosen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[130, 260, 600, 1200, 5000])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--caches",
        type=int,
        nargs="+",
        default=[Settings().profile_cache_users, 0],
        help="profile cache sizes to run (0: no cache)",
    )
    parser.add_argument(
        "--models",
        choices=["on", "off"],
        nargs="+",
        default=["on"],
        help="run the River models stage (the default worker) and/or leave it out",
    )
    parser.add_argument(
        "--vectors",
        choices=["on", "off"],
        nargs="+",
        default=["off"],
        help="run the interest-vector stage with a warm embedding cache and/or leave it out",
    )
    parser.add_argument(
        "--writes",
        choices=["sequential", "overlapped"],
        nargs="+",
        default=["sequential"],
        help="each batch written before the next is folded, and/or folded during that write",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="CPU per profile write of each stage"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "batch_cost.json")
    args = parser.parse_args()
    if args.breakdown and "overlapped" in args.writes:
        # A write's thread CPU would include the fold of the next batch, run meanwhile.
        parser.error("--breakdown times stages one after the other: use --writes sequential")
    models = [choice == "on" for choice in args.models]
    vectors = [choice == "on" for choice in args.vectors]
    overlaps = [choice == "overlapped" for choice in args.writes]
    rows = asyncio.run(
        run(
            args.sizes,
            args.repeat,
            args.caches,
            models,
            vectors=vectors,
            breakdown=args.breakdown,
            overlaps=overlaps,
        )
    )
    chosen = best(rows)
    write_report(args.out, "batch_cost", measured_events=MEASURED_EVENTS, runs=rows, best=chosen)
    print(json.dumps(chosen, indent=2))


if __name__ == "__main__":
    main()
