"""How fast one `profiler run --until-idle` process drains a pre-filled events topic.

Starts a local Tansu broker and redis-server, fills `behavior-events` with a
synthetic shop (realistic mix, 0.5 % malformed, 1 % re-sent), then times a
separate `profiler run --until-idle 2` process. The rate is records over the
worker's busy time, from its first batch to its last commit, so process start,
group join and the idle wait at the end are excluded; the wall time of the
whole process is reported beside it.

    python bench/drain.py --events 200000 --users 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream.devstack import DevStack
from stream.producing import send_records
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator
from stream.worker import wall_clock_ms

RESULTS = Path(__file__).parent / "results"
HOUR_MS = 3_600_000


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILER_")}
    env.update(
        PROFILER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        PROFILER_REDIS_URL=settings.redis_url,
        PROFILER_GROUP_ID="bench-drain",
        PROFILER_KAFKA_SESSION_TIMEOUT_MS="3000",
        PROFILER_KAFKA_HEARTBEAT_INTERVAL_MS="300",
    )
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS / "drain.json")
    parser.add_argument(
        "--profile", type=Path, help="run the worker under pyinstrument, text report here"
    )
    args = parser.parse_args()

    with DevStack(Settings(), partitions=args.partitions) as stack:
        settings = stack.settings()
        now = wall_clock_ms()
        shop = ShopGenerator(args.users, seed=42, start_ms=now - 24 * HOUR_MS, end_ms=now)
        t0 = time.perf_counter()
        sent = asyncio.run(send_records(settings, shop.records(args.events, 0.005, 0.01)))
        fill_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            stats_path = Path(tmp) / "stats.json"
            t0 = time.perf_counter()
            runner = [sys.executable]
            if args.profile:
                runner += ["-m", "pyinstrument", "-o", str(args.profile)]
            subprocess.run(
                [*runner, "-m", "stream.cli", "run", "--until-idle", "2",
                 "--stats-json", str(stats_path)],
                env=worker_env(settings), check=True,
            )  # fmt: skip
            wall_s = time.perf_counter() - t0
            stats = json.loads(stats_path.read_text())
    result = {
        "benchmark": "drain",
        "command": "python bench/drain.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "events_sent": sent,
        "users": args.users,
        "partitions": args.partitions,
        "fill_s": round(fill_s, 2),
        "worker_wall_s": round(wall_s, 2),
        "worker": stats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
