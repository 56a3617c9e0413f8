"""What counting money in one currency changes, on the synthetic shop's eight currencies.

The shop (stream/synthetic_shop.py) prices the same products in USD, EUR,
GBP, CAD, AUD, JPY, PLN and SEK, each shopper in one currency. This folds
the same events through the worker's batch step twice, in process (the
in-memory store, the default River models): once with amounts counted as
sent (no `PROFILER_CURRENCY_RATES`, what the worker did before the setting)
and once with the shop's own rates to USD. Per currency it reports the
purchases, the share of them that raised a fraud alert, their mean risk, and
how many of the ten largest spends are in that currency; and the spend of
the top spender in USD.

    python bench/currencies.py
    python bench/currencies.py --users 5000 --events 100000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
from drain import (  # bench/drain.py
    AFTER_SHOP_DAY_MS,
    as_records,
    batch_results,
    shop_day,
    shop_day_arguments,
    write_report,
)

from profiling.currency import Currencies
from profiling.events import Event, decode_event
from profiling.models import ProfileModels
from profiling.pipeline import Record
from profiling.profile import ProfileParams
from profiling.store import InMemoryProfileStore
from stream.synthetic_shop import RATES, shop_rates

RESULTS = Path(__file__).parent / "results"


async def fold(records: list[Record], currencies: Currencies, batch: int) -> dict[str, Any]:
    """Fold every record; per-currency alert shares and risks, and the top spends."""
    store = InMemoryProfileStore()
    params = ProfileParams(heartbeat_ms=60_000, currencies=currencies)
    models = ProfileModels(currencies=currencies)
    now = AFTER_SHOP_DAY_MS
    alerted: set[str] = set()
    risks: dict[str, float] = {}
    async for result in batch_results(records, batch, store, params, models):
        alerted.update(orjson.loads(body)["event_id"] for _, body in result.alerts)
        risks.update(result.risk_scores)
    purchases: dict[str, list[str]] = defaultdict(list)  # currency -> event ids
    currency_of_user: dict[str, str] = {}
    for record in records:
        event = decode_event(record.value or b"", now)
        assert isinstance(event, Event)
        if event.type == "purchase":
            purchases[event.currency].append(event.event_id)
            currency_of_user[event.user_id] = event.currency
    profiles = await store.load(list(currency_of_user))
    spends = sorted(((p.spend, u) for u, p in profiles.items()), reverse=True)
    top = Counter(currency_of_user[u] for _, u in spends[:10])
    in_usd = shop_rates("USD") or {}
    top_user = spends[0][1]
    top_usd = sum(
        (e.amount or 0.0) / (1.0 if e.currency == "USD" else in_usd[e.currency])
        for r in records
        if r.key == top_user.encode()
        and isinstance(e := decode_event(r.value or b"", now), Event)
        and e.type == "purchase"
    )
    per_currency = {
        code: {
            "purchases": len(ids),
            "alerted_pct": round(100 * sum(i in alerted for i in ids) / len(ids), 2),
            "mean_risk": round(sum(risks.get(i, 0.0) for i in ids) / len(ids), 4),
            "in_top_10_spends": top.get(code, 0),
        }
        for code, ids in sorted(purchases.items(), key=lambda item: -len(item[1]))
    }
    return {
        "alerts": len(alerted),
        "per_currency": per_currency,
        "top_spender": {"currency": currency_of_user[top_user], "spend_usd": round(top_usd, 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shop_day_arguments(
        parser, users=5000, events=100_000, batch=2000, out=RESULTS / "currencies.json"
    )
    args = parser.parse_args()
    records = as_records(shop_day(args.users, args.seed).records(args.events))
    runs = {}
    for label, currencies in (
        ("as_sent", Currencies()),
        ("converted", Currencies("USD", shop_rates("USD") or {})),
    ):
        began = time.perf_counter()
        runs[label] = asyncio.run(fold(records, currencies, args.batch))
        runs[label]["seconds"] = round(time.perf_counter() - began, 1)
        print(label, orjson.dumps(runs[label]).decode(), flush=True)
    write_report(
        args.out,
        "currencies",
        users=args.users,
        events=args.events,
        batch=args.batch,
        seed=args.seed,
        shop_rates_per_usd=RATES,
        runs=runs,
    )


if __name__ == "__main__":
    main()
