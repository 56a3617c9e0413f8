"""Client CPU per key of the shared embedding cache: batched commands against one per key.

`RedisEmbeddingCache` reads with MGET and writes with a script call per
`KEYS_PER_CALL` keys; the baseline is what it did before (and what a client
of redis-py usually writes): a pipeline of one GET, or one SET ... EX, per
key. Both run here against a local redis-server on the same 1,536-byte
vectors (MiniLM's 384 float32), interleaved, best of `--repeat`; µs of this
process's CPU and of wall time per key.

    python bench/shared_cache.py --keys 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from drain import write_report  # bench/drain.py

from profiling.embedding_cache import text_key
from stream.devstack import LocalRedis
from stream.interest_setup import RedisEmbeddingCache
from stream.redis_store import connect

RESULTS = Path(__file__).parent / "results"
TTL_S = 600


async def measure(keys: int, repeat: int) -> list[dict[str, Any]]:
    with LocalRedis() as server:
        client = connect(server.url)
        cache = RedisEmbeddingCache(client)
        names = [text_key("bench", f"text {i}") for i in range(keys)]
        items = [(key, os.urandom(1536)) for key in names]

        async def pipeline_get() -> object:
            pipe = client.pipeline(transaction=False)
            for key in names:
                pipe.get(key.redis_key())
            return await pipe.execute()

        async def pipeline_set() -> object:
            pipe = client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key.redis_key(), value, ex=TTL_S)
            return await pipe.execute()

        async def batched_get() -> object:
            return await cache.get_many(names)

        async def batched_set() -> object:
            return await cache.set_many(items, TTL_S)

        methods: list[tuple[str, str, Callable[[], Awaitable[object]]]] = [
            ("set", "pipeline of SET EX", pipeline_set),
            ("set", "RedisEmbeddingCache.set_many", batched_set),
            ("get", "pipeline of GET", pipeline_get),
            ("get", "RedisEmbeddingCache.get_many", batched_get),
        ]
        best: dict[str, dict[str, Any]] = {}
        for _ in range(repeat):
            for op, label, run in methods:
                wall, cpu = time.perf_counter(), time.process_time()
                await run()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                row = {
                    "op": op,
                    "method": label,
                    "keys": keys,
                    "client_cpu_us_per_key": round(cpu / keys * 1e6, 2),
                    "wall_us_per_key": round(wall / keys * 1e6, 2),
                }
                kept = best.get(label)
                if kept is None or row["client_cpu_us_per_key"] < kept["client_cpu_us_per_key"]:
                    best[label] = row
        assert await cache.get_many(names[:3]) == [value for _, value in items[:3]]
        await client.aclose()
    return list(best.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "shared_cache.json")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.keys, args.repeat))
    for row in rows:
        print(json.dumps(row))
    write_report(args.out, "shared_cache", rows=rows)


if __name__ == "__main__":
    main()
