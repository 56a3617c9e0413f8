"""Freshness: from an event's production to its profile being readable in Redis.

A `profiler run` process consumes a topic fed at a steady rate with synthetic
shop traffic. Every 20 ms a probe event goes to one of 50 probe users; a reader
outside the worker polls Redis every millisecond and records when each probe's
user shows the probe applied (its `events` count reached the probe's number).
Latency = that moment minus the moment the probe was handed to the producer,
so it includes producer linger, broker, fetch wait, apply, the Redis write and
the poll interval. The worker's own event-to-store histogram is scraped from
its /metrics at the end.

    python bench/freshness.py --rates 10000 20000 --seconds 20
    python bench/freshness.py --rates 10000 --worker-env PROFILER_BATCH_MAX_MS=10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from itertools import islice
from pathlib import Path

import numpy as np
import orjson
import redis.asyncio as aioredis

from stream import kafka
from stream.devstack import DevStack, free_port
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator
from stream.worker import wall_clock_ms

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
PROBE_USERS = 50
PROBE_EVERY_S = 0.02
TICK_S = 0.01


async def feed(settings: Settings, rate: int, seconds: float, probes: dict[str, float]) -> int:
    """Produce `rate` events/s of shop traffic for `seconds`, with probe events mixed in."""
    # Event times spread over the feeding window itself, so each event's ts is close to
    # the moment it is sent (the worker's event-to-store histogram then means something).
    now = wall_clock_ms()
    total = int(rate * seconds)
    shop = ShopGenerator(users=20_000, seed=rate, start_ms=now, end_ms=now + int(seconds * 1000))
    records = iter(shop.records(total))
    producer = kafka.producer(settings)
    await producer.start()
    sent, probe_no, counts = 0, 0, [0] * PROBE_USERS
    started = time.monotonic()
    next_probe = started
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - sent
            for key, value in islice(records, max(due, 0)):
                await producer.send(settings.topic_events, value, key=key)
                sent += 1
            if time.monotonic() >= next_probe:
                user = probe_no % PROBE_USERS
                counts[user] += 1
                event_id = f"probe-{probe_no}"
                body = {"event_id": event_id, "user_id": f"probe{user}", "type": "login",
                        "ts": wall_clock_ms()}  # fmt: skip
                probes[f"probe{user}:{counts[user]}"] = time.monotonic()
                await producer.send(
                    settings.topic_events, orjson.dumps(body), key=f"probe{user}".encode()
                )
                probe_no += 1
                next_probe += PROBE_EVERY_S
            await asyncio.sleep(TICK_S)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def watch(
    redis_url: str, probes: dict[str, float], seen: dict[str, float], until: asyncio.Event
) -> None:
    """Poll the users with a probe in flight every millisecond; note when each probe lands.

    Only those users are read, and each user's count is compared with the last
    one seen, so the watcher's own cost stays small next to the worker's.
    """
    client = aioredis.Redis.from_url(redis_url)
    landed = [0] * PROBE_USERS  # probes of each user seen so far
    try:
        while not (until.is_set() and len(seen) >= len(probes)):
            waiting = [u for u in range(PROBE_USERS) if f"probe{u}:{landed[u] + 1}" in probes]
            if waiting:
                pipe = client.pipeline(transaction=False)
                for user in waiting:
                    pipe.hget(f"profile:{{probe{user}}}", "events")
                counts = await pipe.execute()
                now = time.monotonic()
                for user, count in zip(waiting, counts, strict=True):
                    for n in range(landed[user] + 1, int(count or 0) + 1):
                        seen[f"probe{user}:{n}"] = now
                    landed[user] = max(landed[user], int(count or 0))
            await asyncio.sleep(0.001)
    finally:
        await client.aclose()


async def measure(settings: Settings, rate: int, seconds: float) -> dict[str, object]:
    probes: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()
    watcher = asyncio.create_task(watch(settings.redis_url, probes, seen, done))
    sent = await feed(settings, rate, seconds, probes)
    done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watcher, timeout=60)
    latencies = np.array([seen[k] - probes[k] for k in seen]) * 1000
    return {
        "target_rate": rate,
        "sent": sent,
        "probes": len(probes),
        "probes_seen": len(seen),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "max_ms": round(float(latencies.max()), 1),
    }


def scrape_histogram(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("profiler_event_to_store_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
    return buckets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[10_000, 20_000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--encoder",
        default="none",
        help="PROFILER_ENCODER_MODEL of the worker (default none: the aggregate path alone)",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra PROFILER_* setting for the worker, e.g. PROFILER_BATCH_MAX_MS=10",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "freshness.json")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.worker_env)

    runs = []
    with DevStack(Settings(), partitions=6) as stack:
        for index, rate in enumerate(args.rates):
            base = stack.settings()
            settings = base.model_copy(update={
                "redis_url": base.redis_url.rsplit("/", 1)[0] + f"/{index + 1}",
                "group_id": f"bench-fresh-{index}",
                "topic_events": f"fresh-{index}",
            })  # fmt: skip
            asyncio.run(_create(settings))
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILER_")} | {
                "PROFILER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "PROFILER_REDIS_URL": settings.redis_url,
                "PROFILER_GROUP_ID": settings.group_id,
                "PROFILER_TOPIC_EVENTS": settings.topic_events,
                "PROFILER_KAFKA_SESSION_TIMEOUT_MS": "3000",
                "PROFILER_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
                "PROFILER_WEB_PORT": str(port),
                "PROFILER_ENCODER_MODEL": args.encoder,
                **extra,
            }
            worker = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "run"], env=env, cwd=ROOT
            )
            try:
                _wait_ready(port)
                result = asyncio.run(measure(settings, rate, args.seconds))
                result["worker_event_to_store_histogram"] = scrape_histogram(port)
            finally:
                worker.terminate()
                worker.wait(timeout=60)
            result["encoder"] = args.encoder
            result["worker_env"] = extra
            runs.append(result)
            print(json.dumps(result))
    report = {
        "benchmark": "freshness",
        "command": "python bench/freshness.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


async def _create(settings: Settings) -> None:
    from stream.devstack import create_topics

    await create_topics(settings.kafka_bootstrap, {settings.topic_events: 6})


def _wait_ready(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the worker did not become ready")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
