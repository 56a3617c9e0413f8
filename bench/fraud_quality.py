"""Fraud-risk quality and River cost, before and after delayed labels (never a test).

A fraud scenario of our own (`stream.fraud_scenarios`: account takeover, card
testing, new-account high-value orders, mixed into a normal shop with hard
legitimate cases) runs through the engine's batch pipeline (`apply_batch`
with the models stage, the in-memory store) in event-time order, in consumer-
sized batches. Labels for part of the fraud (and a sample of legitimate
events) arrive `--delay-h` hours after their events and are applied
(`apply_labels`) as the stream passes their timestamp, exactly as a worker
would see them on `fraud-labels`.

Two periods of the same shop: the first (`--hours`, its labels arriving
`--delay-h` after each event), then a later one with new users and new fraud
and no labels yet. Reported:
- on the later period's events: ROC AUC of the risk score, alert precision
  and recall at the threshold, and the best precision at recall >= 0.8, for
  models that streamed the first period without labels (the anomaly model
  alone: "before labels") and with them ("after labels");
- the same on the last `--eval-share` of the first period while its labels
  were still arriving (patterns that first appear there are still unlabelled);
- River cost: the same stream through the pipeline without the models stage,
  interleaved, best of `--repeats`, µs per event and the ratio.

    python bench/fraud_quality.py                   # 4000 users, 72 h
    python bench/fraud_quality.py --quick           # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import orjson

from profiling.labels import apply_labels
from profiling.models import ProfileModels
from profiling.pipeline import Record, Stages, apply_batch
from profiling.profile import ProfileParams
from profiling.store import InMemoryProfileStore
from stream.fraud_scenarios import Scenario, generate

ROOT = Path(__file__).resolve().parent.parent
HOUR_MS = 3_600_000


def roc_auc(scores: list[float], labels: list[int]) -> float:
    """Mann-Whitney U over ranks (ties count half)."""
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return float("nan")
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def precision_recall(scores: list[float], labels: list[int], threshold: float) -> dict[str, float]:
    flagged = [y for s, y in zip(scores, labels, strict=True) if s >= threshold]
    hits = sum(flagged)
    return {
        "threshold": threshold,
        "alerts": len(flagged),
        "precision": round(hits / len(flagged), 4) if flagged else 0.0,
        "recall": round(hits / max(1, sum(labels)), 4),
    }


def best_at_recall(scores: list[float], labels: list[int], recall: float) -> dict[str, float]:
    """The highest-precision threshold whose recall is at least `recall`."""
    best = precision_recall(scores, labels, 0.0)
    for threshold in sorted(set(scores)):
        row = precision_recall(scores, labels, threshold)
        if row["recall"] >= recall and row["precision"] >= best["precision"]:
            best = row
    return best


async def run_stream(
    events: list[dict[str, object]],
    labels: list[dict[str, object]],
    models: ProfileModels | None,
    batch: int,
    store: InMemoryProfileStore | None = None,
) -> tuple[dict[str, float], float, float]:
    """Feed events (and labels as their time comes); (event_id -> risk), seconds, label seconds.

    Labels due after the last event are applied at the end, so a later call on the
    same models and store continues with every label learnt.
    """
    store = store if store is not None else InMemoryProfileStore()
    params = ProfileParams(heartbeat_ms=60_000)
    stages = Stages(models=models)
    risks: dict[str, float] = {}
    spent, label_spent, next_label = 0.0, 0.0, 0
    for start in range(0, len(events) + batch, batch):
        chunk = events[start : start + batch]
        now = int(str(chunk[-1]["ts"])) if chunk else 1 << 62
        due = []
        while next_label < len(labels) and int(str(labels[next_label]["ts"])) <= now:
            due.append(labels[next_label])
            next_label += 1
        if due and models is not None:
            records = [
                Record(
                    "fraud-labels", 0, next_label + i, str(b["user_id"]).encode(), orjson.dumps(b)
                )
                for i, b in enumerate(due)
            ]
            began = time.perf_counter()
            await apply_labels(records, store, models, now)
            label_spent += time.perf_counter() - began
        if not chunk:
            break
        records = [
            Record("events", 0, start + i, str(b["user_id"]).encode(), orjson.dumps(b))
            for i, b in enumerate(chunk)
        ]
        began = time.perf_counter()
        result = await apply_batch(records, store, params, lambda now=now: now, stages)
        spent += time.perf_counter() - began
        risks.update(result.risk_scores)
    return risks, spent, label_spent


def evaluate(
    scenario: Scenario, risks: dict[str, float], ids: list[str], threshold: float
) -> dict[str, Any]:
    scores = [risks[i] for i in ids]
    truth = [int(i in scenario.fraud) for i in ids]
    return {
        "events": len(ids),
        "fraud": sum(truth),
        "roc_auc": round(roc_auc(scores, truth), 4),
        "alerts_at_threshold": precision_recall(scores, truth, threshold),
        "best_precision_at_recall_0.8": best_at_recall(scores, truth, 0.8),
    }


async def later_period(
    first: Scenario, labels: list[dict[str, object]], later: Scenario, args: argparse.Namespace
) -> tuple[dict[str, float], ProfileModels]:
    """Stream `first` (with `labels`, if any), then `later` with no labels; `later`'s risks."""
    models, store = ProfileModels(alert_threshold=args.threshold), InMemoryProfileStore()
    await run_stream(first.events, labels, models, args.batch, store)
    risks, _, _ = await run_stream(later.events, [], models, args.batch, store)
    return risks, models


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    first = generate(users=args.users, hours=args.hours, seed=args.seed)
    delay = int(args.delay_h * HOUR_MS)
    labels = first.labels(
        fraction=args.label_fraction, negatives=args.negatives, delay_ms=delay, seed=args.seed
    )
    first_end = int(str(first.events[-1]["ts"]))
    later = generate(  # the same shop later on: new users, new fraud, no labels yet
        users=args.users, hours=args.hours, seed=args.seed + 1, start_ms=first_end + 2 * delay
    )
    blind, _ = await later_period(first, [], later, args)
    taught, models = await later_period(first, labels, later, args)

    # While labels trickle in: the last part of the first period, scored as it streamed.
    times = {e["event_id"]: int(str(e["ts"])) for e in first.events}
    start = int(str(first.events[0]["ts"]))
    labelled = {str(label["event_id"]) for label in labels}
    late_from = first_end - args.eval_share * (first_end - start)
    streaming, _, _ = await run_stream(
        first.events, labels, ProfileModels(alert_threshold=args.threshold), args.batch
    )
    late = sorted(i for i in first.scored if times[i] >= late_from and i not in labelled)

    costs = []
    for _ in range(args.repeats):  # interleaved, best of: the machine is shared
        _, plain, _ = await run_stream(first.events, [], None, args.batch)
        _, modelled, _ = await run_stream(first.events, [], ProfileModels(), args.batch)
        costs.append((plain, modelled))
    plain = min(c[0] for c in costs)
    modelled = min(c[1] for c in costs)
    n, scored = len(first.events), len(first.scored)
    later_ids = sorted(later.scored)
    return {
        "what": "fraud risk quality before/after delayed labels, and River cost per event",
        "scenario": {
            "users_per_period": args.users,
            "hours_per_period": args.hours,
            "seed": args.seed,
            "events": [n, len(later.events)],
            "scored": [scored, len(later.scored)],
            "fraud": [len(first.fraud), len(later.fraud)],
            "labels": len(labels),
            "label_delay_h": args.delay_h,
            "label_fraction": args.label_fraction,
            "negatives_labelled": args.negatives,
        },
        "later_period_before_labels": evaluate(later, blind, later_ids, args.threshold),
        "later_period_after_labels": evaluate(later, taught, later_ids, args.threshold),
        "first_period_last_share_while_labels_arrive": evaluate(
            first, streaming, late, args.threshold
        ),
        "labels_learnt": models.risk.labels,
        "label_weight_at_end": round(models.risk.label_weight, 3),
        "cost": {
            "pipeline_without_models_us_per_event": round(plain / n * 1e6, 2),
            "pipeline_with_models_us_per_event": round(modelled / n * 1e6, 2),
            "models_us_per_event": round((modelled - plain) / n * 1e6, 2),
            "models_us_per_scored_event": round((modelled - plain) / scored * 1e6, 2),
            "ratio": round(modelled / plain, 3),
            "repeats": args.repeats,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--hours", type=float, default=72.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--delay-h", type=float, default=12.0, help="label delay")
    parser.add_argument("--label-fraction", type=float, default=0.6, help="fraud labelled")
    parser.add_argument("--negatives", type=float, default=0.05, help="legit events labelled")
    parser.add_argument("--eval-share", type=float, default=0.33, help="last share evaluated")
    parser.add_argument("--threshold", type=float, default=0.8, help="alert threshold")
    parser.add_argument("--batch", type=int, default=2000, help="events per consumer batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fraud.json")
    args = parser.parse_args()
    if args.quick:
        args.users, args.hours, args.repeats = 600, 24.0, 1
        args.delay_h = 4.0
    report = asyncio.run(measure(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
