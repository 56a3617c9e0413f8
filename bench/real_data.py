"""The public data slices through the worker's batch step: alerts, reasons, segments (never a test).

Each preset's file (`profiler produce --preset`: taobao, online-retail,
amazon-reviews) is imported, then folded in process (the in-memory store,
the default River models, fresh) in batches of 500, 2,000 and 5,000 events.
Per preset and batch size: events, scored events, alerts, the most cited
reasons, and the segments in words with their sizes; per preset, how far the
same event's risk moved between batch sizes (a score should not depend on
them). These are honest shoppers' data sets: every alert is a false one.

The files are the slices in `../shared/data` (see its README), not part of
the repository; `--data` points elsewhere. Run with `PYTHONPATH` on two
checkouts to compare them (from outside both trees); `--label` names the run.

    python bench/real_data.py
    python bench/real_data.py --presets online-retail --batches 2000
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from drain import as_records, batch_results, write_report  # bench/drain.py

from profiling.models import ProfileModels
from profiling.pipeline import Record
from profiling.profile import ProfileParams
from profiling.store import InMemoryProfileStore
from stream.file_import import read_events

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
FILES = {
    "taobao": ("taobao_UserBehavior_100k.csv", "CNY"),
    "online-retail": ("online_retail_uci_first8000.csv", "GBP"),
    "amazon-reviews": ("amazon_fashion_5core_2018.json.gz", "USD"),
}
LATE_MS = 2_000_000_000_000  # imports keep every event (none is "in the future")


def currencies(code: str) -> dict[str, Any]:
    """The worker's currency for the preset, where this checkout has the setting."""
    if "currencies" not in ProfileParams.__dataclass_fields__:  # a checkout from before it
        return {}
    from profiling.currency import Currencies

    return {"currencies": Currencies(code)}


async def fold(records: list[Record], batch: int, code: str) -> dict[str, Any]:
    money = currencies(code)
    store = InMemoryProfileStore()
    models = ProfileModels(**money)
    params = ProfileParams(heartbeat_ms=60_000, **money)
    now = max(orjson.loads(r.value or b"{}")["ts"] for r in records) + 3_600_000
    risks: dict[str, float] = {}
    alerts, reasons = 0, Counter[str]()
    async for result in batch_results(records, batch, store, params, models, now_ms=now):
        risks.update(result.risk_scores)
        alerts += len(result.alerts)
        for _, body in result.alerts:
            reasons.update(r["detail"].split(" (")[0] for r in orjson.loads(body)["reasons"][:1])
    profiles = await store.load(sorted({r.key.decode() for r in records if r.key}))
    sizes = Counter(p.segment for p in profiles.values() if p.segment is not None)
    segments = models.segments
    return {
        "scored": len(risks),
        "alerts": alerts,
        "alerted_pct": round(100 * alerts / max(1, len(risks)), 2),
        "top_reasons": reasons.most_common(5),
        "segments": [[k, sizes[k], segments.describe(k)] for k in sorted(sizes)],
        "risks": risks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--presets", nargs="+", choices=list(FILES), default=list(FILES))
    parser.add_argument("--batches", type=int, nargs="+", default=[500, 2000, 5000])
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--out", type=Path, default=RESULTS / "real_data.json")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    for preset in args.presets:
        name, code = FILES[preset]
        path = args.data / name
        if not path.exists():
            print(f"{preset}: {path} is missing, skipped", flush=True)
            continue
        records = as_records(read_events(path, preset, now_ms=LATE_MS))
        runs = {str(b): asyncio.run(fold(records, b, code)) for b in args.batches}
        reference = runs[str(args.batches[len(args.batches) // 2])]["risks"]
        moved = {
            b: round(max((abs(r["risks"][e] - reference[e]) for e in reference), default=0.0), 4)
            for b, r in runs.items()
        }
        for run in runs.values():
            del run["risks"]
        report[preset] = {"events": len(records), "runs": runs, "risk_moved_by_batch": moved}
        print(preset, orjson.dumps(report[preset]).decode(), flush=True)
    write_report(args.out, "real_data", label=args.label, results=report)


if __name__ == "__main__":
    main()
