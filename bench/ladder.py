"""Where a drained event's time goes: the worker's batch step built up one stage at a time.

100,000 events/s per process leaves 10 µs for each event, everything
included. This measures how much of that the layers under the profile work
take on this machine: each rung drains the same pre-filled topic (the drain
benchmark's synthetic shop: 0.5 % malformed, 1 % re-sent) from its start, in
this process, in batches of up to 5,000 records (the worker's default), and
adds one stage to the rung before it:

1. `consume`: aiokafka's `getmany` alone (fetching, building the records);
2. `validate`: + `decode_batch` (decoding against the v1 contract, grouping
   by user, dead letters);
3. `fold`: + `apply_batch` into the in-memory store (dedupe window,
   aggregates, categories, the state and profile fields; no Redis);
4. `models`: + River segments and fraud risk, the worker's default;
5. `redis`: the same against the real Redis store (load and save scripts, the
   worker's profile cache), as the worker runs it.

The worker itself (bench/drain.py) adds publishing, offset commits and
metrics. Partitions are assigned directly (no group, no commits). Rate =
records over the time from the first batch to the last; CPU µs per record of
this process (redis-server's CPU is reported beside the `redis` rung). The
rungs run interleaved, `--repeat` rounds; each rung's best round is kept.

    python bench/ladder.py --events 200000 --users 20000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from drain import fill_topic, redis_cpu_s, write_report  # bench/drain.py

from profiling.pipeline import BatchResult, Stages, apply_batch, decode_batch
from profiling.store import InMemoryProfileStore, ProfileStore
from stream import kafka
from stream.devstack import DevStack
from stream.model_setup import build_models
from stream.redis_store import RedisProfileStore, connect
from stream.settings import Settings
from stream.worker import profile_params, wall_clock_ms

RESULTS = Path(__file__).parent / "results"
RUNGS = ("consume", "validate", "fold", "models", "redis")

Step = Callable[[Sequence[Any]], Awaitable[object]]


async def make_step(rung: str, settings: Settings) -> tuple[Step, Callable[[], Awaitable[None]]]:
    """The batch step of a rung, and what to close after it."""

    async def nothing() -> None:
        return None

    if rung == "consume":

        async def consume(records: Sequence[Any]) -> object:
            return records

        return consume, nothing
    if rung == "validate":

        async def validate(records: Sequence[Any]) -> object:
            return decode_batch(records, wall_clock_ms(), BatchResult())

        return validate, nothing
    store: ProfileStore
    close = nothing
    if rung == "redis":
        client = connect(settings.redis_url)
        await client.flushdb()
        store = RedisProfileStore(client, cache_users=settings.profile_cache_users)
        close = client.aclose
    else:
        store = InMemoryProfileStore()
    stages = Stages(models=build_models(settings) if rung != "fold" else None)
    params = profile_params(settings)

    async def fold(records: Sequence[Any]) -> object:
        return await apply_batch(records, store, params, wall_clock_ms, stages)

    return fold, close


async def drain(settings: Settings, rung: str, events: int) -> dict[str, Any]:
    """Read the whole topic from its start through one rung's step."""
    step, close = await make_step(rung, settings)
    consumer = kafka.events_consumer(settings, group_id=None)  # the worker's fetch settings
    await consumer.start()
    redis_cpu = redis_cpu_s(settings.redis_url)
    try:
        partitions = consumer.partitions_for_topic(settings.topic_events) or set()
        consumer.assign([TopicPartition(settings.topic_events, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        read, started, cpu = 0, 0.0, 0.0
        while read < events:
            batches = await consumer.getmany(
                timeout_ms=settings.batch_max_ms, max_records=settings.batch_max_events
            )
            records = [record for part in batches.values() for record in part]
            if records and not read:
                started, cpu = time.perf_counter(), time.process_time()
            read += len(records)
            if records:
                await step(records)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await consumer.stop()
        await close()
    row = {
        "rung": rung,
        "records": read,
        "records_per_s": round(read / wall),
        "cpu_us_per_record": round(cpu / read * 1e6, 2),
    }
    if rung == "redis":
        row["redis_cpu_us_per_record"] = round(
            (redis_cpu_s(settings.redis_url) - redis_cpu) / read * 1e6, 2
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rungs", nargs="+", choices=RUNGS, default=list(RUNGS))
    parser.add_argument("--repeat", type=int, default=2, help="rounds, the rungs interleaved")
    parser.add_argument("--out", type=Path, default=RESULTS / "ladder.json")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, Any]]] = {rung: [] for rung in args.rungs}
    with DevStack(Settings(), partitions=6) as stack:
        settings = stack.settings()
        _, sent, _ = fill_topic(settings, args.events, args.users)
        for _ in range(args.repeat):
            for rung in args.rungs:
                row = asyncio.run(drain(settings, rung, sent))
                print(json.dumps(row), flush=True)
                runs[rung].append(row)
    best = {rung: max(rows, key=lambda row: row["records_per_s"]) for rung, rows in runs.items()}
    write_report(
        args.out,
        "ladder",
        events_sent=sent,
        users=args.users,
        best=best,
        runs_records_per_s={
            rung: [row["records_per_s"] for row in rows] for rung, rows in runs.items()
        },
    )


if __name__ == "__main__":
    main()
