"""What an `erase` and a `merge` (`profile-commands`) cost, by the size of the keyspace.

An erase deletes the user's profile keys in one script, then the features kept
for fraud labels, `profile-scored:{u}:<event_id>`, listed by the user's index
of them, `profile-scored:{u}`; a merge moves those features to the other
user instead, sets the profile aside, folds it into the other and writes that
one. Neither should cost more in a larger keyspace.
This fills a local redis-server (single node, then cluster mode) with
`--users` profiles written by the worker's own store, each with two scored
events (the index's own bytes are measured, `MEMORY USAGE` of 200 users'), then
times `--commands` erases of random users and as many merges of
one random user into another, one after the other, as the worker runs them
(`apply_commands`).

    python bench/commands.py
    python bench/commands.py --users 10000 100000 --commands 50
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

import orjson

import stream  # noqa: F401  first: numpy then loads as in the worker (one OpenBLAS thread)

# isort: split
from drain import write_report  # bench/drain.py

from profiling.behaviour import Behaviour
from profiling.commands import apply_commands
from profiling.pipeline import Record, Stages
from profiling.profile import Profile, ProfileParams, event_digest
from profiling.store import Write, scored_index_key
from stream.devstack import LocalRedis
from stream.redis_store import RedisProfileStore, connect

RESULTS = Path(__file__).parent / "results"
NOW_MS = 1_764_000_000_000
CHUNK = 500


def profile(user_id: str, rng: random.Random) -> Profile:
    """A profile of a dozen events with categories, behaviour state and a dedupe window."""
    stamps = tuple(sorted(NOW_MS - rng.randrange(86_400_000) for _ in range(12)))
    return Profile(
        user_id=user_id,
        version=3,
        first_seen=stamps[0],
        last_seen=stamps[-1],
        updated=NOW_MS,
        events=12,
        counts={"view": 8, "click": 2, "purchase": 1, "login": 1},
        spend=round(rng.uniform(5, 500), 2),
        orders=1,
        category_scores={f"cat{rng.randrange(50)}": rng.random() for _ in range(6)},
        watermarks={rng.randrange(6): rng.randrange(10**6)},
        seen=b"".join(event_digest(f"{user_id}-{i}") for i in range(12)),
        behaviour=Behaviour(first_ts=stamps[0], last_ts=stamps[-1], events=stamps),
    )


async def fill(store: RedisProfileStore, users: int, seed: int) -> None:
    rng = random.Random(seed)
    for start in range(0, users, CHUNK):
        writes = [
            Write(profile(f"u{i}", rng), 0, ((f"e{i}a", b"\x01" * 73), (f"e{i}b", b"\x01" * 73)))
            for i in range(start, min(users, start + CHUNK))
        ]
        assert not await store.save(writes)


def command(body: dict[str, str]) -> Record:
    return Record("profile-commands", 0, 0, body["user_id"].encode(), orjson.dumps(body), NOW_MS)


async def timed(store: RedisProfileStore, records: list[Record]) -> list[float]:
    """Milliseconds of each command, run one by one as the worker runs a batch's."""
    taken = []
    for record in records:
        started = time.perf_counter()
        await apply_commands([record], store, NOW_MS, ProfileParams(), Stages())
        taken.append((time.perf_counter() - started) * 1000)
    return taken


async def measure(redis: LocalRedis, users: int, n: int, seed: int) -> dict[str, Any]:
    client = connect(redis.url, cluster=redis.cluster)
    try:
        await client.flushall()
        store = RedisProfileStore(client)
        await fill(store, users, seed)
        keys = await client.dbsize()
        rng = random.Random(seed + 1)
        sample = [scored_index_key(f"u{i}") for i in rng.sample(range(users), 200)]
        index_bytes = [await client.memory_usage(key, samples=0) for key in sample]
        picked = rng.sample(range(users), 3 * n)
        erases = [command({"command": "erase", "user_id": f"u{i}"}) for i in picked[:n]]
        merges = [
            command({"command": "merge", "from_user_id": f"u{a}", "user_id": f"u{b}"})
            for a, b in zip(picked[n : 2 * n], picked[2 * n :], strict=True)
        ]
        erase_ms = await timed(store, erases)
        merge_ms = await timed(store, merges)
        pattern = "profile-scored:{u*}:*"  # the features, not their index
        left = [key async for key in client.scan_iter(match=pattern, count=1000)]
        # An erase deletes the user's two; a merge moves the visitor's to the account.
        assert len(left) == 2 * (users - n), "every erased user's scored keys are gone"
    finally:
        await client.aclose()
    return {
        "redis": "cluster (one node)" if redis.cluster else "single node",
        "users": users,
        "keys": keys,
        "commands": n,
        "index_bytes_2_ids": statistics.median(index_bytes),  # MEMORY USAGE, 200 users
        "erase_ms": _spread(erase_ms),
        "merge_ms": _spread(merge_ms),
    }


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "max": round(ordered[-1], 2),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for cluster in (False, True):
        with LocalRedis(cluster=cluster) as redis:
            for users in args.users:
                result = await measure(redis, users, args.commands, args.seed)
                print(orjson.dumps(result).decode(), flush=True)
                results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--commands", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "commands.json")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    write_report(args.out, "commands", results=results)


if __name__ == "__main__":
    main()
