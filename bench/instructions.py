"""Instructions per event of the worker's batch step, counted by callgrind.

Wall and CPU time on a shared 2-core machine move by ±30 % from run to run and
by up to three times from day to day; the number of instructions a piece of
code executes does not. This runs `apply_batch` (the worker's batch step, by
default without vectors) in process against a local redis-server, as
bench/batch_cost.py does, under `valgrind --tool=callgrind` with
instrumentation off until the measured loop: a synthetic shop's first 20,000
events in batches of 2,500 (the users exist, the profile cache holds them),
then the next 10,000 in batches of each size, counted. Only the worker's side
is counted (redis-server is another process). Needs valgrind
(`callgrind_control` toggles the counting).

    python bench/instructions.py
    python bench/instructions.py --sizes 130 --models on
    python bench/instructions.py --sizes 600 5000 --models off --vectors on

`--vectors on` adds the interest-vector stage with a warm embedding cache (see
bench/batch_cost.py): every text embedded before the counting starts.

The measured process hashes strings with a fixed seed (PYTHONHASHSEED=0 unless
set): with a random one, set and dict layouts move the count by about ±0.3 %
from run to run.

Set PYTHONPATH to another checkout (and run from outside both trees) to count
that code with the same harness.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from itertools import product
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
WARM_EVENTS = 20_000
MEASURED_EVENTS = 10_000


async def child(url: str, size: int, models: bool, vectors: bool) -> None:
    """The measured process: warm up, then count the batches of `size` only."""
    from batch_cost import shop_records, warmed_step  # bench/batch_cost.py

    from stream.settings import Settings

    records = shop_records(WARM_EVENTS + MEASURED_EVENTS)
    cache_users = Settings().profile_cache_users
    client, step = await warmed_step(
        url, records, WARM_EVENTS, cache_users, models, vectors=vectors
    )
    measured = records[WARM_EVENTS:]
    counting("on")
    for start in range(0, len(measured), size):
        await (await step(measured[start : start + size])).write()
    counting("off")
    await client.aclose()


def counting(state: str) -> None:
    """Turn callgrind's counting in this process on or off; returns once it is done."""
    toggle = ["callgrind_control", "-i", state, str(os.getpid())]
    subprocess.run(toggle, check=True, capture_output=True)


def count(url: str, size: int, models: bool, vectors: bool) -> dict[str, Any]:
    """One child under callgrind; its instructions per measured event."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}",
             sys.executable, __file__, "--child", url, str(size),
             "on" if models else "off", "on" if vectors else "off"],
            check=True, capture_output=True, env={"PYTHONHASHSEED": "0", **os.environ},
        )  # fmt: skip
        totals = re.search(r"^totals:\s+(\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError("callgrind wrote no totals")
    return {
        "batch": size,
        "models": models,
        "vectors": vectors,
        "instructions_per_event": round(int(totals.group(1)) / MEASURED_EVENTS),
    }


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _, _, url, size, models, vectors = sys.argv
        asyncio.run(child(url, int(size), models == "on", vectors == "on"))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[130, 5000])
    parser.add_argument("--models", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--vectors", nargs="+", choices=["on", "off"], default=["off"])
    parser.add_argument("--out", type=Path, default=RESULTS / "instructions.json")
    args = parser.parse_args()

    from stream.devstack import LocalRedis

    rows = []
    with LocalRedis() as redis_server:
        for size, models, vectors in product(args.sizes, args.models, args.vectors):
            row = count(redis_server.url, size, models == "on", vectors == "on")
            print(json.dumps(row), flush=True)
            rows.append(row)
    from drain import write_report  # bench/drain.py

    write_report(
        args.out,
        "instructions",
        warm_events=WARM_EVENTS,
        measured_events=MEASURED_EVENTS,
        rows=rows,
    )


if __name__ == "__main__":
    main()
