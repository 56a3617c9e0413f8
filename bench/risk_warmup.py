"""A fresh risk model's alerts, by how many events it has scored (never a test).

A worker without `PROFILER_MODEL_SECRET` keeps no model snapshot, so every
start is a fresh model. This folds the synthetic shop (stream/synthetic_shop.py,
20,000 users over a day, about 18,000 purchases and logins) through the batch
step in process with fresh models (the in-memory store) and reports the share
of scored events that raised an alert, per range of the scored events'
position in the stream.

Run it with `PYTHONPATH` on two checkouts to compare them (from outside both
trees); `--label` names the run in the JSON.

    python bench/risk_warmup.py
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import orjson
from drain import (  # bench/drain.py
    as_records,
    batch_results,
    shop_day,
    shop_day_arguments,
    write_report,
)

from profiling.models import ProfileModels
from profiling.pipeline import Record
from profiling.profile import ProfileParams
from profiling.store import InMemoryProfileStore

RESULTS = Path(__file__).parent / "results"
RANGES = ((0, 250), (250, 500), (500, 750), (750, 1000), (1000, 2000), (2000, 5000),
          (5000, 10_000), (10_000, None))  # fmt: skip


async def alerted_by_position(records: list[Record], batch: int) -> list[dict[str, Any]]:
    store, params, models = InMemoryProfileStore(), ProfileParams(), ProfileModels()
    order: list[str] = []
    alerted: set[str] = set()
    async for result in batch_results(records, batch, store, params, models):
        order += [event_id for event_id, _ in result.risk_scores]
        alerted.update(orjson.loads(body)["event_id"] for _, body in result.alerts)
    rows = []
    for first, end in RANGES:
        scored = order[first:end]
        hits = sum(event_id in alerted for event_id in scored)
        rows.append({"scored_from": first, "scored_to": first + len(scored), "alerts": hits,
                     "alerted_pct": round(100 * hits / max(1, len(scored)), 2)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shop_day_arguments(
        parser, users=20_000, events=200_000, batch=1000, out=RESULTS / "risk_warmup.json"
    )
    parser.add_argument("--label", default="this tree")
    args = parser.parse_args()
    records = as_records(shop_day(args.users, args.seed).records(args.events))
    rows = asyncio.run(alerted_by_position(records, args.batch))
    for row in rows:
        print(args.label, orjson.dumps(row).decode(), flush=True)
    write_report(args.out, "risk_warmup", label=args.label, users=args.users,
                 events=args.events, batch=args.batch, seed=args.seed, rows=rows)  # fmt: skip


if __name__ == "__main__":
    main()
