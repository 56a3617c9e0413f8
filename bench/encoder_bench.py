"""Text encoder throughput: a naive transformers loop against `TransformerEncoder`, side by side.

The texts are what the worker really encodes: `event_text` of a synthetic shop's
event stream (item titles, search queries, reviews, in stream order, with the
stream's repetition). Each round times, back to back on the same texts:

    naive        transformers as usually written: batches of 64 in input order,
                 each padded to its longest text
    bucketed     TransformerEncoder with dedupe off: length buckets under a token budget
    deduped      TransformerEncoder as the worker runs it: dedupe, then buckets
    int8         bucketed, with dynamic int8 linear layers, forced on past its cosine
                 gate so its speed and its agreement with float32 can be reported

Rounds interleave the methods, so a neighbour's load hits all of them alike;
speedups are medians of per-round ratios. Also measured: the cost per text and
per event of the all-hits cache path, and of folding vectors into profiles.

    python bench/encoder_bench.py --texts 1500 --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from profiling.embedding_cache import EmbeddingLRU, embed_events, embed_texts
from profiling.encoder import MINILM_ID, TransformerEncoder, minilm_path, plan_batches
from profiling.events import Event
from profiling.vectors import InterestState, VectorParams, advance_batch, contributions, event_text
from stream.synthetic_shop import ShopGenerator

RESULTS = Path(__file__).parent / "results" / "encoder.json"
T0 = 1_750_000_000_000


def shop_events(n: int, seed: int) -> list[Event]:
    """A day of the synthetic shop: every event type in the realistic mix."""
    shop = ShopGenerator(users=5000, seed=seed, start_ms=T0, end_ms=T0 + 86_400_000)
    return [msgspec.convert(body, Event) for body in shop.events(n)]


def stream_texts(events: Sequence[Event], n: int) -> list[str]:
    texts = [text for e in events if (text := event_text(e)) is not None]
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} texts in the stream; ask for more events")
    return texts[:n]


class NaiveEncoder:
    """The usual transformers loop: fixed batches of 64, padded to the batch's longest text."""

    def __init__(self, max_tokens: int, batch: int = 64) -> None:
        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_tokens, self.batch = max_tokens, batch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch):
                chunk = list(texts[start : start + self.batch])
                enc = self.tokenizer(
                    chunk,
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(out)


def timed(encode: Callable[[Sequence[str]], np.ndarray], texts: list[str]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    encode(texts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"texts_per_s": len(texts) / wall, "texts_per_cpu_s": len(texts) / cpu}


def run_rounds(
    methods: dict[str, Callable[[Sequence[str]], np.ndarray]], texts: list[str], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Every method once per round, interleaved; one warm-up call each first."""
    for encode in methods.values():
        encode(texts[:64])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    for r in range(rounds):
        for name, encode in methods.items():
            runs[name].append(timed(encode, texts))
            print(f"round {r + 1}: {name:9s} {runs[name][-1]['texts_per_s']:8.1f} texts/s")
    return runs


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Median and best per method; speedups as medians of same-round ratios, and best/best."""
    out: dict[str, Any] = {}
    naive = runs["naive"]
    for name, rows in runs.items():
        out[name] = {
            "texts_per_s_median": statistics.median(r["texts_per_s"] for r in rows),
            "texts_per_s_best": max(r["texts_per_s"] for r in rows),
            "texts_per_cpu_s_median": statistics.median(r["texts_per_cpu_s"] for r in rows),
            "rounds": rows,
        }
        if name == "naive":
            continue
        for metric in ("texts_per_s", "texts_per_cpu_s"):
            ratios = [r[metric] / n[metric] for r, n in zip(rows, naive, strict=True)]
            out[name][f"speedup_{metric}_median"] = statistics.median(ratios)
        best_naive = max(r["texts_per_s"] for r in naive)
        out[name]["speedup_best_vs_best"] = out[name]["texts_per_s_best"] / best_naive
    return out


def padded_tokens(
    lengths: list[int], naive_batch: int, encoder: TransformerEncoder
) -> dict[str, int]:
    """Tokens each method pushes through the model, padding included: the FLOPs it pays for."""
    naive = sum(
        len(lengths[i : i + naive_batch]) * max(lengths[i : i + naive_batch])
        for i in range(0, len(lengths), naive_batch)
    )
    batches = plan_batches(lengths, encoder.token_budget, encoder.max_batch)
    bucketed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return {"real": sum(lengths), "naive": naive, "bucketed": bucketed}


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a.astype(np.float64) * b, axis=1)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def cache_hit_costs(
    encoder: TransformerEncoder, texts: list[str], events: list[Event], repeats: int
) -> dict[str, float]:
    """µs per text and per event when every vector is already in the process LRU."""

    async def measure() -> dict[str, float]:
        lru = EmbeddingLRU(capacity=200_000)
        await embed_texts(texts, encoder, lru)
        await embed_events(events, encoder, lru)
        start = time.perf_counter()
        for _ in range(repeats):
            await embed_texts(texts, encoder, lru)
        per_text = (time.perf_counter() - start) / (repeats * len(texts))
        start = time.perf_counter()
        for _ in range(repeats):
            await embed_events(events, encoder, lru)
        per_event = (time.perf_counter() - start) / (repeats * len(events))
        return {
            "embed_texts_us_per_text": per_text * 1e6,
            "embed_events_us_per_event": per_event * 1e6,
        }

    return asyncio.run(measure())


def fold_cost(events: list[Event], dim: int, repeats: int) -> dict[str, float]:
    """µs per event of `contributions` + `advance_batch` over a batch's users."""
    users = sorted({e.user_id for e in events})
    index = {u: i for i, u in enumerate(users)}
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(events), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    params = VectorParams()
    user_of = [index[e.user_id] for e in events]
    states = [InterestState.empty(dim)] * len(users)
    start = time.perf_counter()
    for _ in range(repeats):
        rows = contributions(events, vectors, user_of, params)
        advance_batch(states, rows, params)
    seconds = (time.perf_counter() - start) / repeats
    return {"us_per_event": seconds / len(events) * 1e6, "events": len(events), "users": len(users)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    events = shop_events(int(args.texts * 1.3) + 200, args.seed)
    texts = stream_texts(events, args.texts)
    budget = {} if args.token_budget is None else {"token_budget": args.token_budget}
    naive = NaiveEncoder(args.max_tokens)
    bucketed = TransformerEncoder(max_tokens=args.max_tokens, dedupe=False, **budget)
    deduped = TransformerEncoder(max_tokens=args.max_tokens, **budget)
    gated = TransformerEncoder(max_tokens=args.max_tokens, int8=True, **budget)
    int8 = TransformerEncoder(
        max_tokens=args.max_tokens, dedupe=False, int8=True, int8_min_cosine=-1.0, **budget
    )
    methods = {
        "naive": naive.encode,
        "bucketed": bucketed.encode,
        "deduped": deduped.encode,
        "int8": int8.encode,
    }
    runs = run_rounds(methods, texts, args.rounds)
    reference = naive.encode(texts)
    lengths = bucketed.token_counts(texts)
    result = {
        "what": "MiniLM-L6 texts/s on the synthetic shop's event texts, methods interleaved",
        "model": MINILM_ID,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0],
        },
        "texts": {
            "count": len(texts),
            "distinct": len(set(texts)),
            "tokens_mean": float(np.mean(lengths)),
            "tokens_p50_p90_max": [*np.percentile(lengths, [50, 90]).tolist(), max(lengths)],
            "padded_tokens": padded_tokens(lengths, naive.batch, bucketed),
        },
        "settings": {
            "max_tokens": args.max_tokens,
            "token_budget": bucketed.token_budget,
            "max_batch": bucketed.max_batch,
            "naive_batch": naive.batch,
            "rounds": args.rounds,
        },
        "methods": summarise(runs),
        "agreement_with_naive": {
            "bucketed": agreement(reference, bucketed.encode(texts)),
            "deduped": agreement(reference, deduped.encode(texts)),
        },
        "int8": {
            "gate_min_cosine": 0.99,
            "kept_by_gate": gated.precision == "int8",
            "probe_min_cosine": gated.int8_cosine,
            "vs_float32_on_texts": agreement(reference, int8.encode(texts)),
        },
        "cache_hit_path": cache_hit_costs(deduped, texts, events, repeats=5),
        "vector_fold": fold_cost(events, bucketed.dim, repeats=5),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("texts", "int8", "cache_hit_path", "vector_fold")}))
    for name, row in result["methods"].items():
        speedup = row.get("speedup_texts_per_s_median")
        extra = f"  x{speedup:.2f} vs naive (median of rounds)" if speedup else ""
        print(f"{name:9s} {row['texts_per_s_median']:8.1f} texts/s median{extra}")


if __name__ == "__main__":
    main()
