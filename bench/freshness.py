"""Freshness: from an event's production to its profile being readable in Redis.

A `profiler run` process consumes a topic fed at a steady rate with synthetic
shop traffic. Every 20 ms a probe event goes to one of 50 probe users; a reader
outside the worker records when each probe's user shows the probe applied (its
`events` count reached the probe's number). Latency = that moment minus the
moment the probe was handed to the producer, so it includes producer linger,
broker, fetch wait, apply and the Redis write. The worker's own event-to-store
histogram is scraped from its /metrics at the end.

The reader (`--reader`):

* `notify` (default): the benchmark owns its redis-server, so it turns on
  keyspace notifications for hash commands (`notify-keyspace-events Kh`; the
  worker's save script writes profiles with HSET) and subscribes to the probe
  users' `__keyspace@<db>__:profile:{probeN}` channels. On each notification
  for a user with a probe in flight it takes the time, then reads that user's
  `events` once (HGET); the probe counts as seen, at the notification's time,
  only if that value confirms it. The latency therefore also includes the
  notification's delivery (the server publishes it when the write's script
  runs; the reader stamps it when it takes it off the socket), not a poll
  interval, and the reader sleeps in between.
* `poll`: the former reader, for comparison: it reads the users with a probe in
  flight every millisecond (about 6 % of a core here); the latency includes up
  to a poll interval.

The feeder (`--feeder`) shares the two cores with the worker, the broker and
Redis, so it should cost as little as it can: `batch` (default) queues each
10 ms tick's records through the project's batch API (`kafka.send_all`, one
batch per partition, left open for the producer's 5 ms linger as a shop's
producer would); `send`, the earlier feeder, calls `send` per record:
this process then uses a third more CPU and falls behind now and then.
Several feeders: each rate runs once with each, interleaved.

Each run also records the reader and feeder, the CPU time of this process (the
producer and the reader), of redis-server and of the worker during the feed,
and the worker's mean batch (records, and ms from fetch to commit) from its
/metrics.

Whether the worker sustained a rate (`kept_up`): every probe seen, the feed on
time, and probe latency not climbing over the feed's second half (a worker
that falls behind leaves a backlog that grows every second; one that keeps up
takes larger batches instead). `--half-max` first climbs while every rate run
was sustained (`--climb` runs, each a quarter above the highest), so the
maximum is a rate the worker held below one it did not, not just the highest
rate asked for; then narrows it (`--refine` runs, each halfway between it and
the next rate up, which was not sustained), then runs once more at half the
highest rate sustained, the issue's measuring point, in the same invocation.
When every climb was sustained too, the report says the maximum is only a
lower bound (`maximum_is_a_lower_bound`).

Beside every feed, `bench/noise.py`'s probe times a fixed millisecond of CPU
work every 50 ms in a process of its own (`noise` in each run: its median,
p99 and their ratio). Its spread is the machine's, not the worker's: read a
run's p99 against it.

    python bench/freshness.py --rates 10000 20000 --seconds 20
    python bench/freshness.py --rates 20000 25000 30000 35000 40000 --half-max
    python bench/freshness.py --rates 10000 --worker-env PROFILER_BATCH_MAX_MS=10
    python bench/freshness.py --rates 10000 --reader poll
    python bench/freshness.py --rates 5000 7500 --feeder batch send
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from itertools import islice, product
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from drain import SHOP_RATES, write_report  # bench/drain.py
from noise import NoiseProbe  # bench/noise.py
from redis.asyncio.client import PubSub

from profiling.store import profile_key
from stream import kafka
from stream.devstack import DevStack, free_port
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator
from stream.worker import wall_clock_ms

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
PROBE_USERS = 50
PROBE_EVERY_S = 0.02
# A worker that keeps up shows no steady climb of latency over a feed; one that
# falls 1 % behind adds 10 ms per second of feed.
MAX_TREND_MS_PER_S = 10.0
TICK_S = 0.01
READERS = ("notify", "poll")
FEEDERS = ("batch", "send")
# Keyspace notifications for hash commands (HSET, HMSET, ...), as key-named channels.
NOTIFY_EVENTS = "Kh"


def probe_key(user: int) -> str:
    return profile_key(f"probe{user}")


async def feed(
    settings: Settings, rate: int, seconds: float, probes: dict[str, float], feeder: str
) -> int:
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
    acks: list[asyncio.Future[object]] = []
    started = time.monotonic()
    next_probe = started
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = [
                (settings.topic_events, key, value)
                for key, value in islice(records, max(int(elapsed * rate) - sent, 0))
            ]
            if feeder == "batch":
                acks += await kafka.send_all(producer, due, linger=True)  # a shop's producer
            else:
                for topic, key, value in due:
                    acks.append(await producer.send(topic, value, key=key))
            sent += len(due)
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
        await asyncio.gather(*acks)  # a refused record fails the run here
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
                    pipe.hget(probe_key(user), "events")
                counts = await pipe.execute()
                now = time.monotonic()
                for user, count in zip(waiting, counts, strict=True):
                    _land(user, int(count or 0), now, landed, seen)
            await asyncio.sleep(0.001)
    finally:
        await client.aclose()


async def subscribe_probes(client: aioredis.Redis) -> tuple[PubSub, dict[bytes, int]]:
    """Subscribe to the probe users' keyspace channels; return once all are confirmed.

    Returns the subscription and each channel's probe user.
    """
    db = client.connection_pool.connection_kwargs.get("db", 0)
    channels = {f"__keyspace@{db}__:{probe_key(u)}".encode(): u for u in range(PROBE_USERS)}
    pubsub = client.pubsub()
    await pubsub.subscribe(*channels)
    confirmed = 0
    async with asyncio.timeout(10):
        while confirmed < len(channels):
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "subscribe":
                confirmed += 1
    return pubsub, channels


async def listen(
    client: aioredis.Redis,
    pubsub: PubSub,
    channels: dict[bytes, int],
    probes: dict[str, float],
    seen: dict[str, float],
    *,
    until: asyncio.Event,
) -> None:
    """Note when each probe lands, woken by its user's keyspace notifications.

    The time is taken as the notification comes off the socket, before the HGET
    that confirms (or not) the probe's count. A notification for a user with no
    probe in flight (a second HSET of the same save, say) is not followed up.
    """
    landed = [0] * PROBE_USERS
    while not (until.is_set() and len(seen) >= len(probes)):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is None:
            continue
        now = time.monotonic()
        user = channels.get(message["channel"])
        if user is None or f"probe{user}:{landed[user] + 1}" not in probes:
            continue
        count = await client.hget(probe_key(user), "events")
        _land(user, int(count or 0), now, landed, seen)


def _land(user: int, count: int, now: float, landed: list[int], seen: dict[str, float]) -> None:
    """Record `user`'s probes up to `count` as seen at `now` (those not seen before)."""
    for n in range(landed[user] + 1, count + 1):
        seen[f"probe{user}:{n}"] = now
    landed[user] = max(landed[user], count)


async def measure(
    settings: Settings, rate: int, seconds: float, reader: str, feeder: str
) -> dict[str, object]:
    probes: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()
    client = aioredis.Redis.from_url(settings.redis_url)
    pubsub: PubSub | None = None
    # Put back as found: the runs of one invocation share the server.
    previous = next(iter((await client.config_get("notify-keyspace-events")).values())) or ""
    try:
        if reader == "notify":
            await client.config_set("notify-keyspace-events", NOTIFY_EVENTS)
            pubsub, channels = await subscribe_probes(client)
            watcher = asyncio.create_task(
                listen(client, pubsub, channels, probes, seen, until=done)
            )
        else:
            watcher = asyncio.create_task(watch(settings.redis_url, probes, seen, done))
        redis_cpu = await _redis_cpu_s(client)
        cpu, wall = time.process_time(), time.monotonic()
        sent = await feed(settings, rate, seconds, probes, feeder)
        done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watcher, timeout=60)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        redis_cpu = await _redis_cpu_s(client) - redis_cpu
    finally:
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.config_set("notify-keyspace-events", previous)
        await client.aclose()
    latencies = np.array([seen[k] - probes[k] for k in seen]) * 1000
    sent_at = np.array([probes[k] for k in seen])
    return {
        "target_rate": rate,
        "reader": reader,
        "feeder": feeder,
        "sent": sent,
        "probes": len(probes),
        "probes_seen": len(seen),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "max_ms": round(float(latencies.max()), 1),
        "latency_trend_ms_per_s": latency_trend(sent_at, latencies),
        # Every probe: seconds after the first was sent, and its latency in ms
        # (written to a file of their own, `<out>_probes.jsonl`).
        "probe_latencies": [
            [round(float(t), 3), round(float(ms), 1)]
            for t, ms in sorted(zip(sent_at - sent_at.min(), latencies, strict=True))
        ],
        # From the feed's start until the reader saw the last probe: this process
        # (producer and reader) and redis-server (worker's reads and writes, reader).
        "window_s": round(wall, 2),
        "bench_cpu_s": round(cpu, 2),
        "redis_cpu_s": round(redis_cpu, 2),
    }


def latency_trend(sent_at: np.ndarray, latencies_ms: np.ndarray) -> float:
    """How fast probe latency grows over the feed, in ms per second of feed.

    About 0 when the worker keeps up (latency bounded: batches grow instead);
    when it cannot, every second of feed adds the backlog it leaves, so latency
    climbs steadily: 1000 * (1 - its rate / the feed's rate) ms per second.
    Medians of the first and last thirds of the probes (the first tenth left
    out: start-up), so the saw-tooth of large batches does not tip it.
    """
    order = np.argsort(sent_at)
    t, lat = sent_at[order], latencies_ms[order]
    t, lat = t[len(t) // 10 :], lat[len(lat) // 10 :]
    third = len(t) // 3
    if third < 2:
        return float("nan")
    early, late = slice(0, third), slice(len(t) - third, len(t))
    span = float(np.median(t[late]) - np.median(t[early]))
    growth = float(np.median(lat[late]) - np.median(lat[early]))
    return round(growth / span, 1)


def kept_up(run: dict[str, Any], seconds: float) -> bool:
    """Whether the worker sustained a run's rate: every probe seen, the feed on time,
    and latency not climbing (`latency_trend` at most `MAX_TREND_MS_PER_S`)."""
    return bool(
        run["probes_seen"] == run["probes"]
        and run["sent"] >= 0.99 * run["target_rate"] * seconds
        and run["latency_trend_ms_per_s"] <= MAX_TREND_MS_PER_S
    )


def highest_sustained(runs: list[dict[str, Any]], seconds: float) -> int:
    sustained = [r["target_rate"] for r in runs if kept_up(r, seconds)]
    if not sustained:
        raise SystemExit("no rate was sustained: add lower --rates")
    return max(sustained)


def between(runs: list[dict[str, Any]], maximum: int) -> int | None:
    """Halfway (to 500 events/s) from `maximum`, the highest rate sustained, to the
    lowest rate run above it (none of those was sustained); None if there is none."""
    above = [r["target_rate"] for r in runs if r["target_rate"] > maximum]
    if not above:
        return None
    rate = (maximum + min(above)) // 2 // 500 * 500
    return rate if maximum < rate < min(above) else None


async def _redis_cpu_s(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def scrape_worker(port: int) -> dict[str, object]:
    """The worker's event-to-store histogram and its mean batch size and batch time."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    buckets, totals = {}, {}
    for line in text.splitlines():
        if line.startswith("profiler_event_to_store_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(("profiler_batch_records_", "profiler_batch_seconds_")):
            name, value = line.rsplit(" ", 1)
            totals[name] = float(value)
    batches = totals.get("profiler_batch_records_count", 0.0)
    return {
        "worker_event_to_store_histogram": buckets,
        "worker_batches": int(batches),
        "worker_mean_batch_records": round(totals["profiler_batch_records_sum"] / batches, 1)
        if batches
        else None,
        "worker_mean_batch_ms": round(1000 * totals["profiler_batch_seconds_sum"] / batches, 1)
        if batches
        else None,
    }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    parser.add_argument(
        "--reader",
        choices=READERS,
        default="notify",
        help="how the probes are watched: keyspace notifications (default) or 1 ms polling",
    )
    parser.add_argument(
        "--feeder",
        choices=FEEDERS,
        nargs="+",
        default=["batch"],
        help="how records are produced: a batch per tick (default) or a send per record;"
        " several: each rate once with each",
    )
    parser.add_argument(
        "--half-max",
        action="store_true",
        help="then one more run at half the highest rate sustained (see `kept_up`)",
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=2,
        help="with --half-max: runs that halve the gap between the highest rate sustained"
        " and the next rate up, which was not, before the half-maximum run (default 2)",
    )
    parser.add_argument(
        "--climb",
        type=int,
        default=6,
        help="with --half-max: while every rate run was sustained, run a quarter above"
        " the highest, up to this many times (default 6), so the maximum is one",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "freshness.json")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.worker_env)

    runs: list[dict[str, Any]] = []
    with DevStack(Settings(), partitions=6) as stack:
        for rate, feeder in product(args.rates, args.feeder):
            runs.append(run_rate(stack, len(runs), rate, feeder, args, extra=extra))
        half = None
        if args.half_max:
            maximum = highest_sustained(runs, args.seconds)
            for _ in range(args.climb):  # every rate held: the maximum is above them all
                if any(r["target_rate"] > maximum for r in runs):
                    break
                # A quarter above, to 500 events/s, and at least one step of 500 above
                # (below 2,000 events/s the rounding would give `maximum` again).
                rate = max(maximum * 5 // 4 // 500 * 500, maximum + 500)
                runs.append(run_rate(stack, len(runs), rate, args.feeder[0], args, extra=extra))
                maximum = highest_sustained(runs, args.seconds)
            for _ in range(args.refine):
                rate = between(runs, maximum)
                if rate is None:
                    break
                runs.append(run_rate(stack, len(runs), rate, args.feeder[0], args, extra=extra))
                maximum = highest_sustained(runs, args.seconds)
            half = run_rate(
                stack, len(runs), maximum // 1000 * 500, args.feeder[0], args, extra=extra
            )
            half["half_of"] = maximum
            # Every climb sustained: the true maximum is higher, and so is half of it.
            half["maximum_is_a_lower_bound"] = not any(r["target_rate"] > maximum for r in runs)
            runs.append(half)
    extra: dict[str, Any] = {}
    if half is not None:
        at_half = {k: half[k] for k in ("target_rate", "p50_ms", "p99_ms")}
        extra = {
            "maximum_sustained": half["half_of"],
            "maximum_is_a_lower_bound": half["maximum_is_a_lower_bound"],
            "at_half_maximum": at_half,
        }
        print(json.dumps(at_half | {"maximum": half["half_of"]}))
        if half["maximum_is_a_lower_bound"]:
            print(f"every rate up to {half['half_of']} was sustained: the maximum is higher "
                  "(raise --climb)", file=sys.stderr)  # fmt: skip
    # Every probe's latency, one compact line per run, beside the report.
    probes = [{"target_rate": run["target_rate"], "probes": run.pop("probe_latencies")}
              for run in runs]  # fmt: skip
    write_report(args.out, "freshness", runs=runs, **extra)
    probes_out = args.out.with_name(args.out.stem + "_probes.jsonl")
    probes_out.write_text("".join(json.dumps(line) + "\n" for line in probes))


def run_rate(
    stack: DevStack,
    index: int,
    rate: int,
    feeder: str,
    args: argparse.Namespace,
    *,
    extra: dict[str, str],
) -> dict[str, Any]:
    """One feed at `rate` through a new worker process, on its own topic and Redis db."""
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
        "PROFILER_CURRENCY_RATES": SHOP_RATES,
        **extra,
    }
    worker = subprocess.Popen([sys.executable, "-m", "stream.cli", "run"], env=env, cwd=ROOT)
    try:
        _wait_ready(port)
        cpu_before = process_cpu_s(worker.pid)
        noise = NoiseProbe(args.seconds)
        result = asyncio.run(measure(settings, rate, args.seconds, args.reader, feeder))
        result["worker_cpu_s"] = round(process_cpu_s(worker.pid) - cpu_before, 2)
        result["noise"] = noise.result()
        result.update(scrape_worker(port))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    result["encoder"] = args.encoder
    result["worker_env"] = extra
    result["kept_up"] = kept_up(result, args.seconds)
    print(json.dumps(result), flush=True)
    return result


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


if __name__ == "__main__":
    main()
