"""One worker process against a plain Faust app, side by side on the same topic.

Fills a 6-partition `behavior-events` topic once (synthetic shop, realistic
mix), then drains it with a fresh consumer group each time: `profiler run
--until-idle` without vectors, with vectors and a cold embedding cache, with
vectors and the cache the cold pass filled (the production steady state), and
then the Faust baseline (`bench/faust_baseline.py`) into its own Redis
database. Every rate is records over busy time (first batch to last write), so
process start, model load and group joins are excluded, and all run on the
same machine in the same run.

    python bench/throughput.py --events 200000 --users 20000
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
from pathlib import Path

import redis
from drain import PASSES, run_pass, write_report  # bench/drain.py: a `profiler run` per pass

from stream.devstack import DevStack
from stream.producing import send_records
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator
from stream.worker import wall_clock_ms

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
HOUR_MS = 3_600_000


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PROFILER_", "BASELINE_"))}


def run_faust(
    settings: Settings, redis_url: str, expected: int, timeout_s: float, log_path: Path
) -> dict[str, object]:
    env = clean_env() | {
        "BASELINE_BOOTSTRAP": settings.kafka_bootstrap,
        "BASELINE_REDIS_URL": redis_url,
        "BASELINE_TOPIC": settings.topic_events,
        "BASELINE_APP_ID": "bench-faust",
    }
    client = redis.Redis.from_url(redis_url)
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process below
    command = ["-m", "faust", "-A", "bench.faust_baseline", "worker", "-l", "warn", "--without-web"]
    process = subprocess.Popen(
        [sys.executable, *command], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + timeout_s
    try:
        while int(client.get("baseline:records") or 0) < expected:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(
                    f"the Faust baseline did not consume every record; see {log_path}"
                )
            time.sleep(0.2)
        first, last = float(client.get("baseline:first")), float(client.get("baseline:last"))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    # The first timestamp is written after the first batch: count that batch's records
    # out of the rate rather than pretend they took no time.
    busy = last - first
    records = int(client.get("baseline:records") or 0)
    timed = records - int(client.get("baseline:first_records") or 0)
    if busy <= 0 or timed <= 0:
        raise RuntimeError("the Faust baseline took every record in one batch: send more events")
    return {"records": records, "busy_s": round(busy, 3), "records_per_s": round(timed / busy, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = parser.parse_args()

    with DevStack(Settings(), partitions=6) as stack:
        settings = stack.settings()
        now = wall_clock_ms()
        shop = ShopGenerator(args.users, seed=42, start_ms=now - 24 * HOUR_MS, end_ms=now)
        sent = asyncio.run(send_records(settings, shop.records(args.events)))
        base_url = stack.redis.url.rsplit("/", 1)[0]
        ours_settings = settings.model_copy(update={"redis_url": f"{base_url}/1"})
        ours = {label: run_pass(ours_settings, label, None)[0] for label in PASSES}
        # The Faust worker's log goes beside the report.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        log_path = args.out.parent / "faust_baseline.log"
        theirs = run_faust(settings, f"{base_url}/2", sent, timeout_s=600, log_path=log_path)
    faust_rate = theirs["records_per_s"]
    ratios = {
        label: round(stats["records_per_s"] / faust_rate, 2)  # type: ignore[operator]
        for label, stats in ours.items()
        if label != "vectors-cold"
    }
    fields = {
        "events": sent,
        "users": args.users,
        "profiler": ours,
        "faust_baseline": theirs,
        "ratio_to_faust": ratios,
    }
    write_report(args.out, "throughput", **fields)
    print(json.dumps(fields, indent=2))


if __name__ == "__main__":
    main()
