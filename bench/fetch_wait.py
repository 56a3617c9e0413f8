"""How long the broker takes to hand over records a worker keeping up asks for.

A worker keeping up pauses its partitions while it folds a batch and resumes
them as the batch's write begins (stream/worker.py): the records that arrived
meanwhile are already on the broker, and the next batch waits for one fetch.
This feeds a topic at a steady rate (records of `--value-bytes`, a shop
event's size by default, queued every 10 ms, the freshness feeder's tick)
and mimics that cycle with a plain aiokafka consumer: take what is there,
pause, hold for `--hold-ms` (the fold), resume, and time until the next
records are in hand. Only the producer, the consumer and the broker run, so
this is the broker's answer without the worker's load.

    python bench/fetch_wait.py
    python bench/fetch_wait.py --value-bytes 20 --fetch-wait-ms 50 500
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from drain import write_report  # bench/drain.py

from stream.devstack import LocalBroker

RESULTS = Path(__file__).parent / "results"
TOPIC = "fetch-wait"
PARTITIONS = 6


async def feed(bootstrap: str, rate: int, value_bytes: int, stop: asyncio.Event) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        per_tick, n = rate // 100, 0
        while not stop.is_set():
            for _ in range(per_tick):
                await producer.send(TOPIC, value=b"x" * value_bytes, key=str(n).encode())
                n += 1
            await asyncio.sleep(0.01)
    finally:
        await producer.stop()


async def cycles(
    bootstrap: str, fetch_wait_ms: int, hold_ms: float, seconds: float
) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=f"fetch-wait-{fetch_wait_ms}",
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
    )
    await consumer.start()
    waits, sizes = [], []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not any((await consumer.getmany(timeout_ms=fetch_wait_ms)).values()):
                continue
            owned = list(consumer.assignment())
            consumer.pause(*owned)
            await asyncio.sleep(hold_ms / 1000)
            consumer.resume(*owned)
            resumed = time.perf_counter()
            batch = await consumer.getmany(timeout_ms=fetch_wait_ms)
            while not any(batch.values()):
                batch = await consumer.getmany(timeout_ms=fetch_wait_ms)
            waits.append((time.perf_counter() - resumed) * 1000)
            sizes.append(sum(len(records) for records in batch.values()))
    finally:
        await consumer.stop()
    waits = sorted(waits[len(waits) // 10 :])  # after the group settled
    return {
        "fetch_wait_ms": fetch_wait_ms,
        "hold_ms": hold_ms,
        "cycles": len(waits),
        "resume_to_records_ms": {
            "p50": round(waits[len(waits) // 2], 1),
            "p90": round(waits[int(0.9 * len(waits))], 1),
            "mean": round(statistics.mean(waits), 1),
        },
        "mean_batch": round(statistics.mean(sizes), 1),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with LocalBroker() as broker:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
        finally:
            await admin.close()
        stop = asyncio.Event()
        feeding = asyncio.create_task(feed(broker.bootstrap, args.rate, args.value_bytes, stop))
        rows = []
        try:
            for wait in args.fetch_wait_ms:
                row = await cycles(broker.bootstrap, wait, args.hold_ms, args.seconds)
                print(row, flush=True)
                rows.append(row)
        finally:
            stop.set()
            await feeding
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=7_500, help="records per second fed")
    parser.add_argument("--value-bytes", type=int, default=300, help="size of each record")
    parser.add_argument("--fetch-wait-ms", type=int, nargs="+", default=[10, 50, 500])
    parser.add_argument("--hold-ms", type=float, default=35.0, help="paused per cycle (the fold)")
    parser.add_argument("--seconds", type=float, default=12.0, help="per fetch wait")
    parser.add_argument("--out", type=Path, default=RESULTS / "fetch_wait.json")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    write_report(
        args.out,
        "fetch_wait",
        rate=args.rate,
        value_bytes=args.value_bytes,
        partitions=PARTITIONS,
        runs=rows,
    )


if __name__ == "__main__":
    main()
