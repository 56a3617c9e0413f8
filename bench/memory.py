"""Worker memory over a long drain, and Redis bytes per stored profile.

Starts a local Tansu broker and redis-server, fills `behavior-events` (6
partitions) with the synthetic shop as bench/drain.py does (0.5 % malformed,
1 % re-sent), then runs one separate `profiler run --until-idle 2` process per
pass over the whole topic, each pass with a new consumer group and an empty
Redis:

- `vectors`: the MiniLM encoder with a cold embedding cache (Redis flushed, a
  new process: every distinct text is encoded once, and the in-process LRU
  fills from empty);
- `vectors-warm`: the same with the shared cache the cold pass filled kept in
  Redis (profiles forgotten; a new process, so its in-process LRU is empty and
  the encoder hardly runs): tells the encoder's share of the worker's memory
  from the rest of the vector path;
- `no-vectors`: `PROFILER_ENCODER_MODEL=none`;
- `plain`: no vectors and no River models (`PROFILER_MODELS=false`), to show
  what the segment and risk stage adds.

All but `plain` run the River segment and risk models (the default).

While a pass runs, the worker's /proc/<pid>/status (VmRSS, RssAnon, RssFile,
VmHWM) is read every 0.5 s with the records it had consumed, scraped from its
/metrics endpoint (`profiler_batch_records_sum`). After it, for a random
sample of users, `MEMORY USAGE <key> SAMPLES 0` of each of the user's two
keys (exact: every element counted; key name and dict entry included), plus
its `profile-scored:{u}:<event_id>` keys (features of scored purchases and
logins awaiting a label, 30-day TTL) with their index `profile-scored:{u}`,
and the growth of `INFO memory` used_memory over the pass per profile, with
and without the growth of the keys that are no user's (the shared embedding
cache). The payload probe splits the state into its JSON and its dedupe
window (8 bytes per id).

    python bench/memory.py --events 1000000 --users 100000
    python bench/memory.py --quick   # 20,000 events, 2,000 users: a smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import redis
from drain import RESULTS, fill_topic, forget_profiles, worker_env, write_report

from stream.devstack import DevStack, free_port
from stream.settings import Settings

# label -> (PROFILER_ENCODER_MODEL, keep the shared embedding cache of the pass before,
#           PROFILER_MODELS: the River segment and risk stage)
PASSES = {
    "vectors": ("minilm", False, True),
    "vectors-warm": ("minilm", True, True),
    "no-vectors": ("none", False, True),
    "plain": ("none", False, False),
}
# The two keys of every user; `profile-scored:{u}:<event_id>` (one per scored
# purchase or login, with a TTL) are counted beside them as "scored".
KEY_TYPES = {
    "profile": "profile:{{{}}}",
    "state": "profile-state:{{{}}}",
}
SCORED_PREFIX = "profile-scored:{"
PREFIXES = ("profile:", "profile-state:", "profile-scored:", "profiler:emb:")
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
TARGET_BYTES = 4096


# --- the worker's memory ---------------------------------------------------------


def proc_status(pid: int) -> dict[str, int] | None:
    """The kB fields of /proc/<pid>/status we track, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in STATUS_FIELDS:
            values[name] = int(rest.split()[0])
    return values if "VmRSS" in values else None  # a zombie has no VmRSS


def scrape_records(port: int) -> int | None:
    """Records the worker has consumed so far (sum of its batch-size histogram)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.3) as reply:
            body = reply.read().decode()
    except OSError:
        return None  # not serving yet, or busy past the timeout: keep the last count
    for line in body.splitlines():
        if line.startswith("profiler_batch_records_sum "):
            return int(float(line.split()[1]))
    return None


def run_sampled(
    settings: Settings, label: str, interval_s: float, extra_env: dict[str, str]
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """One `profiler run --until-idle 2` process; its stats, its samples, its wall time."""
    port = free_port()
    encoder, _, models = PASSES[label]
    env = worker_env(settings, f"bench-memory-{label}", encoder, models)
    env.update(extra_env, PROFILER_WEB_PORT=str(port))
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.json"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "run", "--until-idle", "2",
             "--stats-json", str(stats_path)],
            env=env,
        )  # fmt: skip
        records, tick = 0, 0
        while proc.poll() is None:
            scraped = scrape_records(port)
            records = records if scraped is None else scraped
            status = proc_status(proc.pid)
            if status is None:
                break
            sample = {"t": round(time.perf_counter() - t0, 2), "records": records}
            sample["fresh"] = scraped is not None  # False: the count is the last one scraped
            samples.append(sample | {k.lower() + "_kb": v for k, v in status.items()})
            tick += 1
            time.sleep(max(0.0, t0 + tick * interval_s - time.perf_counter()))
        if proc.wait() != 0:
            raise SystemExit(f"{label}: worker exited with {proc.returncode}")
        wall_s = time.perf_counter() - t0
        stats: dict[str, Any] = json.loads(stats_path.read_text())
    return stats, samples, wall_s


def mib(kb: float) -> float:
    return round(kb / 1024, 1)


def rss_summary(samples: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """RSS after the first batch, at 25/50/75/100 % of the records, max, end - first, slope.

    "end" is the first sample that saw every record consumed (the idle wait
    follows); "exit" the last sample, which may fall in the worker's shutdown.
    """
    busy = [s for s in samples if s["records"] > 0]
    if not busy:
        return {"error": "no sample saw a consumed record"}
    first = busy[0]
    last = next((s for s in busy if s["records"] >= total), busy[-1])

    def point(s: dict[str, Any]) -> dict[str, Any]:
        return {
            "t": s["t"],
            "records": s["records"],
            "rss_mib": mib(s["vmrss_kb"]),
            "anon_mib": mib(s.get("rssanon_kb", 0)),
            "file_mib": mib(s.get("rssfile_kb", 0)),
        }

    at = {"first_batch": point(first)}
    for pct in (25, 50, 75, 100):
        hit = next((s for s in busy if s["records"] >= total * pct / 100), None)
        at[f"{pct}%"] = point(hit) if hit else None
    at["exit"] = point(samples[-1])
    top = max(samples, key=lambda s: s["vmrss_kb"])
    return {
        "samples": len(samples),
        "at": at,
        "max_rss_mib": mib(top["vmrss_kb"]),
        "max_at_records": top["records"],
        "peak_vmhwm_mib": mib(max(s.get("vmhwm_kb", 0) for s in samples)),
        "end_minus_first_mib": round(mib(last["vmrss_kb"]) - mib(first["vmrss_kb"]), 1),
        "slope_mib_per_100k_records": {
            "first_batch_to_end": slope(busy, 0, total),
            "25_to_100%": slope(busy, total // 4, total),
            "50_to_100%": slope(busy, total // 2, total),
        },
    }


def slope(samples: list[dict[str, Any]], lo: int, hi: int) -> float | None:
    """Least-squares RSS growth, MiB per 100k records, over samples with lo <= records <= hi."""
    pts = [(s["records"], s["vmrss_kb"]) for s in samples if lo <= s["records"] <= hi]
    if len({r for r, _ in pts}) < 3:
        return None
    x, y = np.array(pts, dtype=float).T
    return round(float(np.polyfit(x, y, 1)[0]) * 100_000 / 1024, 2)


# --- Redis bytes -----------------------------------------------------------------


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def describe(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    mean = round(statistics.fmean(ordered), 1)
    return {"mean": mean, "p50": pct(50), "p99": pct(99), "max": ordered[-1]}


def profile_users(client: redis.Redis) -> list[str]:
    keys = client.scan_iter(match="profile:*", count=10_000)
    return sorted(k.decode()[len("profile:{") : -1] for k in keys)


def sample_bytes(
    client: redis.Redis, users: list[str], scored: dict[str, list[bytes]]
) -> dict[str, Any]:
    """MEMORY USAGE (SAMPLES 0) of each key of each sampled user, with sizes and encodings."""
    pipe = client.pipeline(transaction=False)
    for user in users:
        for pattern in KEY_TYPES.values():
            key = pattern.format(user)
            pipe.memory_usage(key, samples=0)
            pipe.object("encoding", key)
        pipe.hlen(KEY_TYPES["profile"].format(user))
        pipe.hget(KEY_TYPES["profile"].format(user), "events")
    replies = pipe.execute()
    width = 2 * len(KEY_TYPES) + 2
    per_type: dict[str, list[int]] = {name: [] for name in KEY_TYPES}
    encodings: dict[str, dict[str, int]] = {name: {} for name in KEY_TYPES}
    for user in users:
        for key in scored.get(user, ()):
            pipe.memory_usage(key, samples=0)
    scored_replies = iter(pipe.execute())
    per_type["scored"], scored_counts = [], []
    totals, fields, events = [], [], []
    for i, user in enumerate(users):
        row = replies[i * width : (i + 1) * width]
        total = 0
        for j, name in enumerate(KEY_TYPES):
            size, encoding = row[2 * j] or 0, row[2 * j + 1]
            per_type[name].append(size)
            total += size
            enc = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
            encodings[name][enc] = encodings[name].get(enc, 0) + 1
        keys = scored.get(user, ())
        scored_bytes = sum(next(scored_replies) or 0 for _ in keys)
        per_type["scored"].append(scored_bytes)
        scored_counts.append(len(keys))
        totals.append(total + scored_bytes)
        fields.append(row[-2])
        events.append(int(row[-1] or 0))
    out: dict[str, Any] = {name: describe(v) for name, v in per_type.items()}
    out["total_per_user"] = describe(totals)
    out["share_of_total"] = {name: round(sum(v) / sum(totals), 3) for name, v in per_type.items()}
    out["encodings"] = encodings
    out["profile_hash_fields"] = describe(fields)
    out["scored_keys"] = describe(scored_counts)
    out["events_per_user"] = describe(events)
    out["users_over_target"] = sum(t > TARGET_BYTES for t in totals)
    return out


def payload_probe(client: redis.Redis, users: list[str]) -> dict[str, Any]:
    """Raw bytes each key holds, and the profile hash re-encoded as a ziplist.

    Payload: hash field names + values (and the vector values alone), the state
    JSON's length and its dedupe window's (8 bytes per event id): what the keys
    would weigh with no Redis overhead. Then each sampled profile hash is
    copied to a scratch key twice: with the server's hash-max-ziplist-value
    (64: the 1,536-byte vectors, and often the categories JSON, force the
    hashtable encoding) and with it raised to 4,096 (a ziplist), to show the
    encoding's share. The setting is restored; the engine's keys are not touched.
    """
    hashes = [client.hgetall(KEY_TYPES["profile"].format(u)) for u in users]
    payload: dict[str, list[int]] = {"profile": [], "vectors": [], "state": [], "window": []}
    for user, fields in zip(users, hashes, strict=True):
        payload["profile"].append(sum(len(k) + len(v) for k, v in fields.items()))
        payload["vectors"].append(sum(len(v) for k, v in fields.items() if k.startswith(b"vec_")))
        document, _, window = (client.get(KEY_TYPES["state"].format(user)) or b"").partition(b"\n")
        payload["state"].append(len(document))
        payload["window"].append(len(window))
    limit = client.config_get("hash-max-ziplist-value")["hash-max-ziplist-value"]
    as_stored = rewrite_hashes(client, users, hashes)
    client.config_set("hash-max-ziplist-value", 4096)
    try:
        as_ziplist = rewrite_hashes(client, users, hashes)
    finally:
        client.config_set("hash-max-ziplist-value", limit)
    return {
        "users": len(users),
        "payload_bytes": {name: describe(v) for name, v in payload.items()},
        "profile_hash_copy_bytes": describe(as_stored),
        "profile_hash_as_ziplist_bytes": describe(as_ziplist),
    }


def rewrite_hashes(
    client: redis.Redis, users: list[str], hashes: list[dict[bytes, bytes]]
) -> list[int]:
    """MEMORY USAGE of each hash written afresh to a scratch key of the same length."""
    sizes = []
    for user, fields in zip(users, hashes, strict=True):
        key = f"profile;{{{user}}}"  # as long as profile:{u}; not a key the worker reads
        client.delete(key)
        client.hset(key, mapping=fields)
        sizes.append(client.memory_usage(key, samples=0) or 0)
        client.delete(key)
    return sizes


def keyspace(client: redis.Redis) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """used_memory, keys by prefix, MEMORY USAGE of the keys that are no user's; scored keys.

    "shared" keys (the embedding cache, a model snapshot, anything else outside
    a user's keys) are weighed so that per-profile figures can leave them out.
    """
    counts = dict.fromkeys((*PREFIXES, "other"), 0)
    shared: list[bytes] = []
    scored: dict[str, list[bytes]] = {}
    for key in client.scan_iter(count=10_000):
        text = key.decode(errors="replace")
        prefix = next((p for p in PREFIXES if text.startswith(p)), "other")
        counts[prefix] += 1
        if prefix in ("profiler:emb:", "other"):
            shared.append(key)
        elif prefix == "profile-scored:":
            rest = text[len(SCORED_PREFIX) :]  # "<user>}:<event_id>", or "<user>}": the index
            user = rest.split("}:", 1)[0] if "}:" in rest else rest[:-1]
            scored.setdefault(user, []).append(key)
    shared_bytes = 0
    for i in range(0, len(shared), 10_000):
        pipe = client.pipeline(transaction=False)
        for key in shared[i : i + 10_000]:
            pipe.memory_usage(key, samples=0)
        shared_bytes += sum(v or 0 for v in pipe.execute())
    other = [k.decode(errors="replace") for k in shared if not k.startswith(b"profiler:emb:")]
    state = {
        "used_memory": used_memory(client),
        "keys": counts,
        "shared_keys_bytes": shared_bytes,
        "other_keys": other[:20],
    }
    return state, scored


def redis_bytes(redis_url: str, before: dict[str, Any], sample: int, seed: int) -> dict[str, Any]:
    """Per-key bytes of a user sample, and used_memory per profile.

    `before` is `keyspace` at the start of the pass (no profiles then). The
    shared keys (embedding cache, model snapshot) are weighed with MEMORY USAGE
    before and after, and their growth is left out of "per_profile" (kept in
    "..._incl_shared_keys"); the scored keys belong to users and stay in.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        users = profile_users(client)
        chosen = random.Random(seed).sample(users, min(sample, len(users)))
        after, scored = keyspace(client)
        n = len(users)
        grown = after["used_memory"] - before["used_memory"]
        shared_grown = after["shared_keys_bytes"] - before["shared_keys_bytes"]
        return {
            "users": n,
            "sampled": len(chosen),
            "memory_usage": sample_bytes(client, chosen, scored),
            "payload": payload_probe(client, chosen[:200]),
            "used_memory": {
                "before": before,
                "after": after,
                "per_profile_incl_shared_keys": round(grown / n, 1),
                "per_profile": round((grown - shared_grown) / n, 1),
            },
        }
    finally:
        client.close()


# --- the run -----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--passes", nargs="+", choices=list(PASSES), default=list(PASSES))
    parser.add_argument("--sample-users", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.5, help="RSS sampling period, s")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20k events, 2k users")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--worker-env",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the worker processes (e.g. MALLOC_ARENA_MAX=2)",
    )
    args = parser.parse_args()
    args.extra_env = dict(item.split("=", 1) for item in args.worker_env)
    if args.quick:
        args.events, args.users = 20_000, 2_000
    out = args.out or RESULTS / ("memory-quick.json" if args.quick else "memory.json")

    started = time.perf_counter()
    with DevStack(Settings(), partitions=args.partitions) as stack:
        settings = stack.settings()
        _, sent, fill_s = fill_topic(settings, args.events, args.users)
        print(f"filled {sent} records in {fill_s:.1f} s", flush=True)
        passes = {label: run_pass(settings, label, args) for label in args.passes}
    total_wall_s = round(time.perf_counter() - started, 1)
    write_report(
        out,
        "memory",
        events_sent=sent,
        users=args.users,
        partitions=args.partitions,
        worker_env=args.extra_env,
        fill_s=round(fill_s, 2),
        total_wall_s=total_wall_s,
        target_bytes_per_profile=TARGET_BYTES,
        passes=passes,
    )
    brief = {
        label: {
            "wall_s": p["worker_wall_s"],
            "rss": {k: v for k, v in p["rss"].items() if k != "trace"},
            "bytes_total_per_user": p["redis"]["memory_usage"]["total_per_user"],
            "used_memory_per_profile": p["redis"]["used_memory"]["per_profile"],
        }
        for label, p in passes.items()
    }
    print(json.dumps(brief, indent=2))
    print(f"wrote {out} ({total_wall_s} s in all)")


def run_pass(settings: Settings, label: str, args: argparse.Namespace) -> dict[str, Any]:
    encoder, keep, models = PASSES[label]
    forget_profiles(settings.redis_url, keep_embeddings=keep)  # not keep: flushdb
    client = redis.Redis.from_url(settings.redis_url)
    if keep:  # drain's forget_profiles leaves the scored keys: they are profiles' too
        scored = list(client.scan_iter(match=SCORED_PREFIX + "*", count=10_000))
        for i in range(0, len(scored), 10_000):
            client.delete(*scored[i : i + 10_000])
    before, _ = keyspace(client)
    client.close()
    stats, samples, wall_s = run_sampled(settings, label, args.interval, args.extra_env)
    print(label, json.dumps(stats), f"wall {wall_s:.1f} s", flush=True)
    return {
        "encoder": encoder,
        "models": models,
        "embedding_cache": "warm (shared Redis cache kept)" if keep else "cold (Redis flushed)",
        "worker_wall_s": round(wall_s, 2),
        "stats": stats,
        "rss": {**rss_summary(samples, int(stats["records"])), "trace": samples},
        "redis": redis_bytes(settings.redis_url, before, args.sample_users, seed=7),
    }


if __name__ == "__main__":
    main()
