"""Whether every user's last change message is their profile as Redis holds it.

A write that changes only counters publishes nothing until the heartbeat has
passed since the user's last message. A `profiler run` process consumes a
synthetic shop fed as a live stream (`--rate` events/s for `--seconds`);
then, once the worker has applied every event, this counts the users whose
latest change message (the highest version on `profile-updates`, what a
consumer keeps) is behind their profile in Redis:

* `caught_up`: as the worker finishes the feed;
* `after_heartbeat`: the heartbeat and two more seconds later, the worker
  still running and nothing more sent;
* `after_stop`: once the worker stopped (SIGTERM).

With `--crash`, the worker is killed (SIGKILL) as it finishes the feed and a
second one takes its partitions: `after_heartbeat` and `after_stop` are then
the second worker's, which only knows what the first held back from the
held-back ledger in Redis.

Each tree given to `--trees` (a `PYTHONPATH` for the worker; by default
this one) runs in turn on its own topic and Redis database, so a tree from before
held-back changes were published shows what a consumer missed. Also recorded:
messages published (and of them held back, where the tree counts them), and
the worker's CPU over the feed.

    python bench/held_back.py
    python bench/held_back.py --trees /path/to/older/tree . --heartbeat 5
    python bench/held_back.py --trees /path/to/older/tree . --crash
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from drain import SHOP_RATES, write_report  # bench/drain.py
from freshness import _wait_ready, process_cpu_s, scrape_worker  # bench/freshness.py

from stream import kafka
from stream.devstack import DevStack, create_topics, free_port
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator
from stream.worker import wall_clock_ms

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
TICK_S = 0.01
HOUR_MS = 3_600_000


async def feed(settings: Settings, shop: ShopGenerator, rate: int, seconds: float) -> int:
    """The shop's records at `rate` per second, a batch per 10 ms tick; how many were sent."""
    records = shop.records(int(rate * seconds), 0.0, 0.0)
    producer = kafka.producer(settings)
    await producer.start()
    sent, acks = 0, []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = [
                (settings.topic_events, key, value)
                for key, value in islice(records, max(int(elapsed * rate) - sent, 0))
            ]
            acks += await kafka.send_all(producer, due, linger=True)
            sent += len(due)
            await asyncio.sleep(TICK_S)
        await producer.flush()
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return sent


async def last_messages(settings: Settings) -> tuple[dict[str, tuple[int, int]], int]:
    """Each user's (version, events) in their highest-version change message; messages read."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    last: dict[str, tuple[int, int]] = {}
    read = 0
    try:
        await consumer._client.force_metadata_update()
        topic = settings.topic_updates
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    read += 1
                    if record.value is None:
                        continue
                    body = orjson.loads(record.value)
                    seen = last.get(body["user_id"], (-1, 0))
                    if body["version"] >= seen[0]:
                        last[body["user_id"]] = (body["version"], body["events"])
            ends = {tp: consumer.highwater(tp) for tp in tps}
            positions = {tp: await consumer.position(tp) for tp in tps}
            if not batch and all(
                end is not None and positions[tp] >= end for tp, end in ends.items()
            ):
                return last, read
    finally:
        await consumer.stop()


async def stored(redis_url: str) -> dict[str, tuple[int, int]]:
    """Each profile's (version, events) in Redis."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match="profile:{*", count=10_000)]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "version", "events")
        values = await pipe.execute()
    finally:
        await client.aclose()
    return {
        key.decode()[len("profile:{") : -1]: (int(version), int(events))
        for key, (version, events) in zip(keys, values, strict=True)
    }


async def behind(settings: Settings) -> dict[str, int]:
    """Users whose last change message is not their stored profile, and the totals."""
    messages, read = await last_messages(settings)
    profiles = await stored(settings.redis_url)
    late = [user for user, state in profiles.items() if messages.get(user) != state]
    return {
        "users": len(profiles),
        "messages": read,
        "behind": len(late),
        "events_behind": sum(profiles[u][1] - messages.get(u, (0, 0))[1] for u in late),
    }


async def applied(redis_url: str) -> int:
    return sum(events for _, events in (await stored(redis_url)).values())


async def wait_applied(redis_url: str, n: int, timeout_s: float = 120.0) -> float:
    """Seconds until the profiles hold `n` events in all."""
    started = time.monotonic()
    while await applied(redis_url) < n:
        if time.monotonic() - started > timeout_s:
            raise RuntimeError("the worker did not apply the feed")
        await asyncio.sleep(0.25)
    return time.monotonic() - started


def run_tree(stack: DevStack, index: int, tree: str, args: argparse.Namespace) -> dict[str, Any]:
    """One feed through a worker running `tree`'s code, on a topic and Redis db of its own."""
    base = stack.settings()
    settings = base.model_copy(update={
        "redis_url": base.redis_url.rsplit("/", 1)[0] + f"/{index + 1}",
        "group_id": f"bench-held-back-{index}",
        "topic_events": f"held-back-{index}",
        "topic_updates": f"held-back-updates-{index}",
    })  # fmt: skip
    asyncio.run(create_topics(settings.kafka_bootstrap, {
        settings.topic_events: 6, settings.topic_updates: 6,
    }))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILER_")} | {
        "PYTHONPATH": str(Path(tree).resolve()),
        "PROFILER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PROFILER_REDIS_URL": settings.redis_url,
        "PROFILER_GROUP_ID": settings.group_id,
        "PROFILER_TOPIC_EVENTS": settings.topic_events,
        "PROFILER_TOPIC_UPDATES": settings.topic_updates,
        "PROFILER_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "PROFILER_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        "PROFILER_ENCODER_MODEL": "none",
        "PROFILER_CURRENCY_RATES": SHOP_RATES,
        "PROFILER_HEARTBEAT_S": str(args.heartbeat),
    }
    now = wall_clock_ms()
    shop = ShopGenerator(args.users, seed=7, start_ms=now - HOUR_MS, end_ms=now)
    code = Path(tree).resolve()  # `-m` puts the working directory first on the path
    worker, port = start_worker(env, code)
    result: dict[str, Any] = {"tree": "this tree" if code == ROOT.resolve() else "another tree"}
    try:
        cpu = process_cpu_s(worker.pid)
        sent = asyncio.run(feed(settings, shop, args.rate, args.seconds))
        result["sent"] = sent
        result["catch_up_s"] = round(asyncio.run(wait_applied(settings.redis_url, sent)), 2)
        result["worker_cpu_s"] = round(process_cpu_s(worker.pid) - cpu, 2)
        result["caught_up"] = asyncio.run(behind(settings))
        if args.crash:
            worker.kill()  # no hand-off, no commit of the batch in flight
            worker.wait(timeout=60)
            worker, port = start_worker(env, code)
        time.sleep(args.heartbeat + 2)
        result["after_heartbeat"] = asyncio.run(behind(settings))
        result["worker_mean_batch_records"] = scrape_worker(port)["worker_mean_batch_records"]
        result["held_back_published"] = held_back_published(port)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    result["after_stop"] = asyncio.run(behind(settings))
    print(json.dumps(result), flush=True)
    return result


def start_worker(env: dict[str, str], code: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A `profiler run` process of the code in `code`, ready (partitions assigned); its port."""
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "run"],
        env=env | {"PROFILER_WEB_PORT": str(port)},
        cwd=code,
    )
    _wait_ready(port)
    return worker, port


def held_back_published(port: int) -> int | None:
    """The worker's count of held-back messages it published; None where it has none."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("profiler_held_back_changes_published_total"):
                return int(float(line.rsplit(" ", 1)[1]))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trees", nargs="+", default=[str(ROOT)], help="worker PYTHONPATHs, in turn"
    )
    parser.add_argument("--rate", type=int, default=2000, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--heartbeat", type=float, default=5.0, help="PROFILER_HEARTBEAT_S")
    parser.add_argument(
        "--crash", action="store_true", help="kill the worker after the feed; a second takes over"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "held_back.json")
    args = parser.parse_args()
    with DevStack(Settings(), partitions=6) as stack:
        runs = [run_tree(stack, i, tree, args) for i, tree in enumerate(args.trees)]
    write_report(args.out, "held_back", runs=runs)


if __name__ == "__main__":
    main()
