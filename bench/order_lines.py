"""Fraud alerts when shops send an order as one purchase per line (never a test).

UCI Online Retail, like many shops' exports, has one purchase per invoice
line, all lines sharing the invoice number as `order_id`. Its 8,000-row slice
is too short to leave the risk model's warm-up, so this takes the synthetic
shop (stream/synthetic_shop.py) and sends each purchase either whole or as
1 to 12 lines (the amount split among them, the same `order_id` and
timestamp), then folds it through the worker's batch step in process (the
in-memory store, the default River models). Reported per stream: orders,
purchase events, scored events, alerts, the orders with an alert, alerts per
alerted order, and the share of orders alerted.

Run it with `PYTHONPATH` on two checkouts to compare them (from outside both
trees, as bench/instructions.py); `--label` names the run in the JSON.

    python bench/order_lines.py
    PYTHONPATH=<other checkout> python <this checkout>/bench/order_lines.py --label before
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
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
from profiling.profile import ProfileParams
from profiling.store import InMemoryProfileStore

RESULTS = Path(__file__).parent / "results"
MAX_LINES = 12


def as_lines(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each purchase as 1..MAX_LINES purchases of one order (amounts split, same ts)."""
    rng = random.Random(seed)
    out = []
    for event in events:
        if event["type"] != "purchase":
            out.append(event)
            continue
        n = min(MAX_LINES, 1 + int(rng.expovariate(1 / 3)))
        shares = [rng.random() + 0.1 for _ in range(n)]
        total = sum(shares)
        for k, share in enumerate(shares):
            line = {**event, "event_id": f"{event['event_id']}-{k}"}
            line["amount"] = round(event["amount"] * share / total, 2)
            out.append(line)
    return out


async def fold(events: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    records = as_records((str(e["user_id"]).encode(), orjson.dumps(e)) for e in events)
    store, params, models = InMemoryProfileStore(), ProfileParams(), ProfileModels()
    alerted: list[str] = []
    scored = 0
    async for result in batch_results(records, batch, store, params, models):
        alerted += [orjson.loads(body)["event_id"] for _, body in result.alerts]
        scored += len(result.risk_scores)
    order_of = {e["event_id"]: e["order_id"] for e in events if e["type"] == "purchase"}
    orders = set(order_of.values())
    alerted_orders = {order_of[e] for e in alerted if e in order_of}
    purchase_alerts = sum(e in order_of for e in alerted)
    return {
        "orders": len(orders),
        "purchase_events": len(order_of),
        "scored": scored,
        "alerts": len(alerted),
        "purchase_alerts": purchase_alerts,
        "alerted_orders": len(alerted_orders),
        "alerts_per_alerted_order": round(purchase_alerts / max(1, len(alerted_orders)), 2),
        "orders_alerted_pct": round(100 * len(alerted_orders) / len(orders), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shop_day_arguments(
        parser, users=20_000, events=200_000, batch=2000, out=RESULTS / "order_lines.json"
    )
    parser.add_argument("--label", default="this tree")
    args = parser.parse_args()
    whole = list(shop_day(args.users, args.seed).events(args.events))
    runs = {}
    for name, events in (("whole orders", whole), ("one event per line", as_lines(whole, 1))):
        began = time.perf_counter()
        runs[name] = asyncio.run(fold(events, args.batch))
        runs[name]["seconds"] = round(time.perf_counter() - began, 1)
        print(args.label, name, orjson.dumps(runs[name]).decode(), flush=True)
    write_report(args.out, "order_lines", label=args.label, users=args.users,
                 events=args.events, batch=args.batch, seed=args.seed, runs=runs)  # fmt: skip


if __name__ == "__main__":
    main()
