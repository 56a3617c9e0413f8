"""GPU check of the MiniLM encoder: agreement with CPU float32, then texts/s, in under 5 minutes.

Runs on a GPU machine (sized for one H200) with only what a stock PyTorch image holds (torch,
transformers, sentence-transformers, numpy, safetensors): msgspec and orjson are
blocked at start, so a run here proves the script never needs them, and only
`profiling.encoder` (numpy alone) is imported from this package. The model
and the texts come from `bench/gpu_model/`, which `bench/gpu_prepare.py` writes
here first (fp16 weights, reference embeddings, text sets). `bench/gpu_check.sh`
is the command to hand the device tool.

Phases, cheapest and most important first; the JSON is rewritten after each,
so a run cut short still leaves what it measured:

 1. correctness: `TransformerEncoder` on the 200 reference texts against the CPU
    float32 embeddings of the ORIGINAL fp32 weights: on the CPU from the fp16
    weights cast up (what rounding the weights alone costs), then on the device
    in float32 (min cosine >= 0.999, asserted), bfloat16 and float16 (>= 0.99,
    asserted), and sentence-transformers fp16 (reported; fp32 with --device cpu).
 1b. a worker's calls: the stream's texts not seen before, about 40 calls of tens
    to hundreds of texts with shapes the device has not run, timed on a fresh
    encoder and again with the shapes seen (what a cold worker waits per call).
 2. fixed shapes, eager: model forward + mean pooling on real token ids padded to
    16 tokens (short, titles and queries, ~12 real tokens) and 64 tokens (medium,
    descriptions), batch 64..4096, float32 / bfloat16 / float16; texts/s from
    CUDA events around warmed-up runs.
 3. end to end: `TransformerEncoder.encode` (tokenise, dedupe, length buckets,
    copy back; on a GPU the next chunk is tokenised while the device runs the
    current one, and rows "tokenise first" show the same without) against
    `SentenceTransformer(folder).half().encode` at batch 256 and 1024, on the
    same texts in the same run: a 20k-text mix of the synthetic shop's event
    stream (titles, queries, reviews, with the stream's repeats), 8192 short
    and 8192 medium texts.
 4. torch.compile (default mode): the fixed-shape forward of phase 2, float32 and
    bfloat16, compiled once per (dtype, length) with the batch dimension dynamic.
    It runs in a child process under the remaining time budget: a compile is
    not started with less than --compile-cap-s left, and the child is killed at
    the deadline, so a slow compile costs rows marked skipped, never the run.

Exit status: 0 when every assertion held and no phase failed; 1 otherwise.
Targets (reported, not asserted): >= 100k short texts/s; >= 2x
sentence-transformers fp16 end to end.

    python bench/gpu_check.py                      # on the GPU machine (see gpu_check.sh)
    python bench/gpu_check.py --device cpu --quick # smoke test here: seconds, no compile
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "bench" / "gpu_model"
ABSENT_THERE = ("msgspec", "orjson")  # not needed, and often absent, on the GPU machine

FP32_MIN_COSINE = 0.999
HALF_MIN_COSINE = 0.99
SHORT_TARGET = 100_000  # short texts/s
ST_RATIO_TARGET = 2.0  # ours / sentence-transformers fp16, end to end

SEQ_LEN = {"short": 16, "medium": 64}  # fixed-shape padding per text set
BATCHES = (64, 256, 1024, 4096)
QUICK_BATCHES = (4, 16)
EAGER_DTYPES = ("float32", "bfloat16", "float16")
COMPILE_DTYPES = ("bfloat16", "float32")  # bf16 first: the GPU default, if time runs out
ST_BATCHES = (256, 1024)
SHORT_NAME = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
BIG_BUDGET = (65_536, 4096)  # padded tokens, rows: a fuller GPU batch than GPU_BATCH

Row = dict[str, Any]


def log(*parts: object) -> None:
    print(*parts, flush=True)


def isolate() -> None:
    """Block the packages the device lacks; make `profiling` importable from the repo root."""
    for name in ABSENT_THERE:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # import now raises ImportError
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


# -- data ---------------------------------------------------------------------------------------


class Data:
    """The prepared folder's reference embeddings and text sets, cut down under --quick."""

    def __init__(self, folder: Path, quick: bool) -> None:
        if not (folder / "reference.npz").is_file():
            raise SystemExit(f"{folder}/reference.npz missing: run `python bench/gpu_prepare.py`")
        with np.load(folder / "reference.npz") as ref:
            self.ref_texts = [str(t) for t in ref["texts"]]
            self.ref_kinds = [str(k) for k in ref["kinds"]]
            self.reference = ref["embeddings"].astype(np.float32)
            self.prepared_fp16 = ref["fp16_weights_cpu_fp32"].astype(np.float32)
        with gzip.open(folder / "texts.json.gz", "rt", encoding="utf-8") as fh:
            sets: dict[str, list[str]] = json.load(fh)
        if quick:
            sets = {
                "short": sets["short"][:32],
                "medium": sets["medium"][:32],
                "mix": sets["mix"][:128],
            }
        self.sets = {name: sets[name] for name in ("mix", "short", "medium")}
        self.manifest = json.loads((folder / "manifest.json").read_text())


def cosines(got: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    cos = np.sum(got.astype(np.float64) * expected.astype(np.float64), axis=1)
    return {
        "min": float(cos.min()),
        "mean": float(cos.mean()),
        "finite": bool(np.isfinite(got).all()),
    }


# -- timing -------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], device: str, min_s: float) -> tuple[float, int]:
    """Mean seconds of one call after three warm-ups; enough calls to fill `min_s`."""
    for _ in range(3):
        fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    once = time.perf_counter() - start
    iters = int(min(200, max(3, min_s / max(once, 1e-6))))
    if device.startswith("cuda"):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000 / iters, iters
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters, iters


class Clock:
    """The run's deadline, as wall-clock epoch seconds (the compile child gets the same one)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def left(self) -> float:
        return self.deadline - time.time()


# -- models -------------------------------------------------------------------------------------


def load_model(folder: Path, device: str, dtype: str) -> Any:
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    return model.eval().to(device=device, dtype=getattr(torch, dtype))


def pooled_forward(model: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Forward + mean pooling + L2 norm, as `TransformerEncoder._forward` does it (fp32 pooling)."""

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(torch.float32)
        pooled = (hidden.to(torch.float32) * weights).sum(dim=1) / weights.sum(dim=1)
        return torch.nn.functional.normalize(pooled, dim=1)

    return forward


def linear_params(model: Any) -> int:
    """Weights of the encoder's linear layers: 2 FLOPs each per token."""
    body = getattr(model, "encoder", model)
    return sum(m.weight.numel() for m in body.modules() if isinstance(m, torch.nn.Linear))


def flops(model: Any, batch: int, seq: int) -> float:
    """Forward FLOPs at (batch, seq): linear layers plus attention's two matmuls."""
    cfg = model.config
    attention = 4 * seq * seq * cfg.hidden_size * cfg.num_hidden_layers
    return float(batch * (2 * linear_params(model) * seq + attention))


def fixed_inputs(tokenizer: Any, texts: Sequence[str], seq: int, device: str) -> tuple[Any, Any]:
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=seq,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def speed_row(mode: str, dtype: str, name: str, mask: Any, per_call: float) -> Row:
    batch, seq = (int(n) for n in mask.shape)
    return {
        "mode": mode,
        "dtype": dtype,
        "set": name,
        "seq_len": seq,
        "batch": batch,
        "ms_per_batch": round(per_call * 1e3, 4),
        "texts_per_s": round(batch / per_call, 1),
        "real_tokens_per_text": round(float(mask.sum()) / batch, 2),
    }


# -- phase 1: correctness -----------------------------------------------------------------------


def correctness(args: argparse.Namespace, data: Data, report: Row) -> dict[str, Any]:
    from profiling.encoder import TransformerEncoder

    texts, expected = data.ref_texts, data.reference
    short = np.array([k == "short" for k in data.ref_kinds])
    out: dict[str, Any] = {
        "texts": len(texts),
        "thresholds": {"float32": FP32_MIN_COSINE, "half": HALF_MIN_COSINE},
    }
    cpu = TransformerEncoder(args.model, device="cpu", dtype="float32", dedupe=False).encode(texts)
    out["cpu_float32_from_fp16_weights"] = {
        **cosines(cpu, expected),
        "vs_prepare_time_same_weights": cosines(cpu, data.prepared_fp16)["min"],
    }
    check(report, "cpu_float32_from_fp16_weights", out, FP32_MIN_COSINE)
    dtypes = [("float32", FP32_MIN_COSINE), ("bfloat16", HALF_MIN_COSINE)]
    if args.device != "cpu":
        dtypes.append(("float16", HALF_MIN_COSINE))
    for dtype, threshold in dtypes:
        if args.device == "cpu" and dtype == "float32":
            continue  # the row above
        enc = TransformerEncoder(args.model, device=args.device, dtype=dtype, dedupe=False)
        got = enc.encode(texts)
        key = f"{args.device}_{dtype}"
        out[key] = {
            **cosines(got, expected),
            "min_short": cosines(got[short], expected[short])["min"],
            "min_medium": cosines(got[~short], expected[~short])["min"],
            "vs_cpu_same_weights": cosines(got, cpu)["min"],
        }
        check(report, key, out, threshold)
    try:
        st = st_model(args)
        got = st.encode(
            texts,
            batch_size=256,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        out[f"sentence_transformers_{args.st_dtype}"] = cosines(got, expected)  # reported only
    except Exception as exc:  # not our code: a broken ST is a finding, not a crash
        out[f"sentence_transformers_{args.st_dtype}"] = {"error": repr(exc)}
        report["failures"].append(f"sentence-transformers: {exc!r}")
    return out


def check(report: Row, key: str, rows: dict[str, Any], threshold: float) -> None:
    row = rows[key]
    row["threshold"] = threshold
    row["pass"] = bool(row["finite"] and row["min"] >= threshold)
    log(
        f"correctness {key:32s} min cos {row['min']:.6f} mean {row['mean']:.6f} "
        f"(>= {threshold}) {'ok' if row['pass'] else 'FAIL'}"
    )
    if not row["pass"]:
        report["failures"].append(f"{key}: min cosine {row['min']:.6f} < {threshold}")


def st_model(args: argparse.Namespace) -> Any:
    from sentence_transformers import SentenceTransformer

    dtype = getattr(torch, args.st_dtype)
    try:  # load straight in the target dtype (the folder's weights are fp16)
        st = SentenceTransformer(str(args.model), device=args.device, model_kwargs={"dtype": dtype})
    except TypeError:  # a sentence-transformers or transformers without that keyword
        st = SentenceTransformer(str(args.model), device=args.device)
    st = st.half() if args.st_dtype == "float16" else st.to(dtype)  # .half(): as the issue asks
    st.max_seq_length = 128  # TransformerEncoder's max_tokens; the texts are shorter anyway
    return st


# -- phase 1b: a worker's calls ----------------------------------------------------------------

DRAIN_BATCH = 500  # texts of the mix per worker batch: about 40 calls, as a drain of 200k events


def drain_calls(args: argparse.Namespace, data: Data) -> Row:
    """A cold worker's encoder calls: each batch's texts not seen before, in stream order.

    The worker encodes only what its caches lack, so after its first batch a call
    holds tens to hundreds of texts, and each call brings (rows, tokens) shapes
    the device has not run yet; the end-to-end phase warms every shape up before
    it times. On an H200 the worker waited about 60 ms a call for such texts
    (BENCHMARKS.md, the worker on one H200). This times each call on a fresh
    encoder (warmed up as the worker's is), then the same calls again, shapes seen.
    """
    from profiling.encoder import TransformerEncoder

    encoder = TransformerEncoder(args.model, device=args.device)
    warm_up_s = encoder.warm_up()
    texts, seen, calls = data.sets["mix"], set(), []
    for start in range(0, len(texts), DRAIN_BATCH):
        fresh = [t for t in dict.fromkeys(texts[start : start + DRAIN_BATCH]) if t not in seen]
        seen.update(fresh)
        if fresh:
            calls.append(fresh)

    def one_pass() -> tuple[list[float], float, float]:
        encoder.tokenize_seconds = encoder.forward_seconds = 0.0
        took = []
        for call in calls:
            sync(args.device)
            start = time.perf_counter()
            encoder.encode(call)
            sync(args.device)
            took.append(time.perf_counter() - start)
        return took, encoder.tokenize_seconds, encoder.forward_seconds

    row: Row = {
        "calls": len(calls),
        "texts": sum(map(len, calls)),
        "texts_first_call": len(calls[0]) if calls else 0,
        "texts_median_call": statistics.median(map(len, calls)) if calls else 0,
        "warm_up_s": round(warm_up_s, 3),
        "precision": encoder.precision,
    }
    for name in ("new shapes", "shapes seen"):
        took, tokenize_s, forward_s = one_pass()
        row[name] = {
            "total_s": round(sum(took), 4),
            "first_call_ms": round(took[0] * 1e3, 2) if took else None,
            "median_call_ms": round(statistics.median(took) * 1e3, 2) if took else None,
            "max_call_ms": round(max(took) * 1e3, 2) if took else None,
            "tokenize_s": round(tokenize_s, 4),
            "forward_s": round(forward_s, 4),
        }
        log(
            f"drain   {name:11s} {row['calls']} calls, {row['texts']} texts: "
            f"{sum(took):.3f} s ({row[name]['median_call_ms']} ms median a call, "
            f"first {row[name]['first_call_ms']} ms); tokenising {tokenize_s:.3f} s"
        )
    return row


# -- phase 2: fixed shapes, eager ---------------------------------------------------------------


def fixed_eager(args: argparse.Namespace, data: Data, clock: Clock) -> list[Row]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    rows: list[Row] = []
    for dtype in args.eager_dtypes:
        model = load_model(args.model, args.device, dtype)
        for name, seq in SEQ_LEN.items():
            texts = data.sets[name][: max(args.batches)]
            ids, mask = fixed_inputs(tokenizer, texts, seq, args.device)
            for batch in args.batches:
                if clock.left() < args.reserve_s:
                    skipped = {"mode": "eager", "dtype": dtype, "set": name, "batch": batch}
                    rows.append({**skipped, "skipped": "time budget"})
                    log(f"eager   {dtype:8s} {name:6s} B={batch}: skipped, time budget")
                    continue
                x, m = ids[:batch], mask[:batch]
                rows.append(eager_shape(args, model, dtype=dtype, name=name, ids=x, mask=m))
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def eager_shape(
    args: argparse.Namespace, model: Any, *, dtype: str, name: str, ids: Any, mask: Any
) -> Row:
    """Texts/s of the eager pooled forward at one fixed (batch, length)."""
    forward = pooled_forward(model)
    with torch.inference_mode():
        per_call, iters = seconds_per_call(lambda: forward(ids, mask), args.device, args.min_s)
    row = speed_row("eager", dtype, name, mask, per_call)
    row["iters"] = iters
    row["tflops"] = round(flops(model, *mask.shape) / per_call / 1e12, 2)
    log(
        f"eager   {dtype:8s} {name:6s} L={row['seq_len']:<3d} B={row['batch']:<5d} "
        f"{row['texts_per_s']:>12,.0f} texts/s  {row['ms_per_batch']:8.3f} ms  "
        f"{row['tflops']:6.1f} TFLOP/s"
    )
    return row


# -- phase 3: end to end ------------------------------------------------------------------------


def end_to_end(args: argparse.Namespace, data: Data, clock: Clock, report: Row) -> list[Row]:
    from profiling.encoder import TransformerEncoder

    cuda = args.device.startswith("cuda")
    main = "bfloat16" if cuda else "float32"  # what TransformerEncoder picks by itself
    encoders = {
        dtype: TransformerEncoder(args.model, device=args.device, dtype=dtype)
        for dtype in ((main, "float16", "float32") if cuda else (main,))
    }
    default = (encoders[main].token_budget, encoders[main].max_batch)
    tag = SHORT_NAME[main]
    # Texts per chunk tokenised while the device runs the one before; 0: tokenise first.
    chunk = encoders[main].overlap_chunk if cuda else 0
    # (label, dtype, dedupe, (token budget, rows), chunk)
    ours: list[tuple[str, str, bool, tuple[int, int], int]] = [
        (f"ours {tag} dedupe (worker)", main, True, default, chunk),
        (f"ours {tag}", main, False, default, chunk),
        (f"ours {tag} big-batch", main, False, BIG_BUDGET, chunk),
    ]
    if cuda:  # what the overlap buys, and at which chunk size
        ours += [
            (f"ours {tag} dedupe, chunks of 4096", main, True, default, 4096),
            (f"ours {tag} dedupe, tokenise first", main, True, default, 0),
            (f"ours {tag}, tokenise first", main, False, default, 0),
        ]
    ours += [(f"ours {SHORT_NAME[d]}", d, False, default, chunk) for d in encoders if d != main]
    methods: list[tuple[str, dict[str, Any], Callable[[list[str]], Any]]] = []
    for label, dtype, dedupe, (budget, rows), overlap_chunk in ours:
        enc = encoders[dtype]

        def run(
            texts: list[str],
            enc: Any = enc,
            knobs: tuple[bool, int, int, int] = (dedupe, budget, rows, overlap_chunk),
        ) -> Any:
            enc.dedupe, enc.token_budget, enc.max_batch, size = knobs
            enc.overlap, enc.overlap_chunk = size > 0, max(size, 1)
            return enc.encode(texts)

        info = {
            "dtype": dtype,
            "dedupe": dedupe,
            "token_budget": budget,
            "max_batch": rows,
            "overlap_chunk": overlap_chunk,
        }
        methods.append((label, info, run))
    try:
        st = st_model(args)
        for bs in ST_BATCHES:

            def st_run(texts: list[str], bs: int = bs) -> Any:
                return st.encode(
                    texts,
                    batch_size=bs,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )

            methods.append(
                (
                    f"sentence-transformers {SHORT_NAME[args.st_dtype]} b{bs}",
                    {"dtype": args.st_dtype, "batch_size": bs},
                    st_run,
                )
            )
    except Exception as exc:
        report["failures"].append(f"sentence-transformers load: {exc!r}")
    out: list[Row] = []
    for name, texts in data.sets.items():
        for label, info, run in methods:
            if clock.left() < args.reserve_s:
                out.append({"set": name, "method": label, "skipped": "time budget"})
                log(f"e2e     {name:6s} {label:34s} skipped, time budget")
                continue
            encoder = encoders.get(str(info["dtype"])) if label.startswith("ours") else None
            if encoder is not None:
                encoder.tokenize_seconds = encoder.forward_seconds = 0.0
            row = timed_encode(args, name=name, label=label, info=info, run=run, texts=texts)
            if encoder is not None:  # where our time went, warm-up and timed runs together
                spent = encoder.tokenize_seconds + encoder.forward_seconds
                row["tokenize_share"] = (
                    round(encoder.tokenize_seconds / spent, 3) if spent else None
                )
                log(f"        tokenising took {row['tokenize_share']:.0%} of encode time")
            out.append(row)
    return out


def timed_encode(
    args: argparse.Namespace,
    *,
    name: str,
    label: str,
    info: dict[str, Any],
    run: Callable[[list[str]], Any],
    texts: list[str],
) -> Row:
    run(texts)  # warm-up on the same texts: every bucket shape seen once
    walls = []
    for _ in range(args.repeats):
        sync(args.device)
        start = time.perf_counter()
        run(texts)
        sync(args.device)
        walls.append(time.perf_counter() - start)
    row = {
        "set": name,
        "method": label,
        **info,
        "texts": len(texts),
        "distinct": len(set(texts)),
        "seconds": [round(w, 4) for w in walls],
        "texts_per_s_best": round(len(texts) / min(walls), 1),
        "texts_per_s_median": round(len(texts) / statistics.median(walls), 1),
    }
    log(
        f"e2e     {name:6s} {label:34s} {row['texts_per_s_best']:>12,.0f} texts/s (best of "
        f"{args.repeats})"
    )
    return row


# -- phase 4: torch.compile, in a child process -------------------------------------------------


def compile_parent(args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """Run the compile phase in a child under the deadline; collect whatever rows it wrote."""
    fd, path = tempfile.mkstemp(prefix="gpu_check_compile_", suffix=".jsonl")
    os.close(fd)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--phase",
        "compile",
        "--jsonl",
        path,
        "--deadline",
        f"{clock.deadline:.3f}",
        "--device",
        args.device,
        "--model",
        str(args.model),
        "--compile-mode",
        args.compile_mode,
        "--compile-shapes",
        args.compile_shapes,
        "--compile-cap-s",
        str(args.compile_cap_s),
        "--min-s",
        str(args.min_s),
        "--batches",
        *map(str, args.batches),
    ]
    started = time.time()
    child = subprocess.Popen(cmd, process_group=0)  # its own group: killable with its workers
    status: dict[str, Any] = {
        "mode": args.compile_mode,
        "shapes": args.compile_shapes,
        "cap_s": args.compile_cap_s,
    }
    try:
        status["rc"] = child.wait(timeout=max(1.0, clock.left()))
    except subprocess.TimeoutExpired:
        status["timed_out"] = True
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            status["killed_at_deadline"] = True
    status["seconds"] = round(time.time() - started, 1)
    lines = Path(path).read_text().splitlines()
    Path(path).unlink()
    status["rows"] = [json.loads(line) for line in lines if line.strip()]
    return status


def compile_child(args: argparse.Namespace) -> None:
    """Compile the pooled forward once per (dtype, length), time every batch size; JSONL out."""
    clock = Clock(args.deadline)
    watchdog = threading.Timer(max(1.0, clock.left() + 10), os._exit, args=(3,))
    watchdog.daemon = True
    watchdog.start()  # the parent kills us at the deadline; this is the belt to its braces
    limits = torch._dynamo.config
    for knob in (
        "recompile_limit",
        "cache_size_limit",
        "accumulated_recompile_limit",
        "accumulated_cache_size_limit",
    ):
        if hasattr(limits, knob):
            setattr(limits, knob, 256)  # 16 shapes x 2 models share one code object
    # Only the batch dimension (marked below) may go dynamic: the length stays a constant, so a
    # second length compiles its own fixed-length graph instead of widening the first one.
    limits.automatic_dynamic_shapes = False
    data = Data(args.model, quick=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    with open(args.jsonl, "a", buffering=1) as sink:

        def emit(row: Row) -> None:
            sink.write(json.dumps(row) + "\n")

        for dtype in COMPILE_DTYPES:
            model = load_model(args.model, args.device, dtype)
            eager = pooled_forward(model)
            for name, seq in SEQ_LEN.items():
                ids, mask = fixed_inputs(
                    tokenizer, data.sets[name][: max(args.batches)], seq, args.device
                )
                compiled = torch.compile(
                    pooled_forward(model),
                    mode=None if args.compile_mode == "default" else args.compile_mode,
                    dynamic=False if args.compile_shapes == "static" else None,
                )
                compiled_shapes(
                    args,
                    clock=clock,
                    emit=emit,
                    key=(dtype, name, seq),
                    inputs=(ids, mask),
                    fns=(eager, compiled),
                    model=model,
                )
            del model


def compiled_shapes(
    args: argparse.Namespace,
    *,
    clock: Clock,
    emit: Callable[[Row], None],
    key: tuple[str, str, int],
    inputs: tuple[Any, Any],
    fns: tuple[Callable[..., Any], Callable[..., Any]],
    model: Any,
) -> None:
    """Per batch size: the first call (a compile, when one is due), agreement, texts/s."""
    dtype, name, seq = key
    ids, mask = inputs
    eager, compiled = fns
    compiled_once = False
    for batch in args.batches:
        needs_compile = args.compile_shapes == "static" or not compiled_once
        if needs_compile and clock.left() < args.compile_cap_s:
            row = {
                "mode": "compile",
                "dtype": dtype,
                "set": name,
                "seq_len": seq,
                "batch": batch,
                "skipped": f"less than {args.compile_cap_s:.0f} s left for a compile",
            }
            emit(row)
            log(f"compile {dtype:8s} {name:6s} L={seq:<3d} B={batch:<5d} skipped: {row['skipped']}")
            continue
        x, m = ids[:batch].clone(), mask[:batch].clone()
        if args.compile_shapes != "static":
            torch._dynamo.maybe_mark_dynamic(x, 0)
            torch._dynamo.maybe_mark_dynamic(m, 0)
        try:
            with torch.inference_mode():
                start = time.perf_counter()
                got = compiled(x, m)
                sync(args.device)
                first = time.perf_counter() - start
                agree = cosines(got.float().cpu().numpy(), eager(x, m).float().cpu().numpy())
                per_call, iters = seconds_per_call(
                    lambda x=x, m=m: compiled(x, m), args.device, args.min_s
                )
        except Exception as exc:
            emit(
                {
                    "mode": "compile",
                    "dtype": dtype,
                    "set": name,
                    "seq_len": seq,
                    "batch": batch,
                    "error": repr(exc)[:500],
                }
            )
            log(f"compile {dtype:8s} {name:6s} B={batch}: ERROR {exc!r}"[:300])
            traceback.print_exc()
            return
        compiled_once = True
        row = speed_row("compile", dtype, name, m, per_call)
        row.update(
            first_call_s=round(first, 2),
            iters=iters,
            min_cos_vs_eager=agree["min"],
            tflops=round(flops(model, batch, seq) / per_call / 1e12, 2),
        )
        emit(row)
        log(
            f"compile {dtype:8s} {name:6s} L={seq:<3d} B={batch:<5d} "
            f"{row['texts_per_s']:>12,.0f} texts/s  {row['ms_per_batch']:8.3f} ms  first call "
            f"{first:6.1f} s  cos vs eager {agree['min']:.5f}"
        )


# -- report -------------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "device": device,
    }
    try:
        env["sentence_transformers"] = metadata.version("sentence-transformers")
    except metadata.PackageNotFoundError:
        env["sentence_transformers"] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        env.update(
            cuda=torch.version.cuda,
            gpu=props.name,
            sms=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=list(torch.cuda.get_device_capability(device)),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    env["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return env


def targets(report: Row) -> dict[str, Any]:
    """The issue's targets, read off the rows: best short texts/s, and ours / ST end to end."""
    fixed = [r for r in report.get("fixed_shape", []) if "texts_per_s" in r and r["set"] == "short"]
    out: dict[str, Any] = {
        "short_texts_per_s_target": SHORT_TARGET,
        "st_ratio_target": ST_RATIO_TARGET,
    }
    if fixed:
        best = max(fixed, key=lambda r: r["texts_per_s"])
        out["short_fixed_best"] = {k: best[k] for k in ("mode", "dtype", "batch", "texts_per_s")}
        out["short_fixed_met"] = best["texts_per_s"] >= SHORT_TARGET
    e2e = [r for r in report.get("end_to_end", []) if "texts_per_s_best" in r]
    for name in ("mix", "short", "medium"):
        rows = [r for r in e2e if r["set"] == name]
        st = [r for r in rows if r["method"].startswith("sentence")]
        ours = [r for r in rows if r["method"].startswith("ours")]
        if not (st and ours):
            continue
        st_best = max(st, key=lambda r: r["texts_per_s_best"])
        ours_best = max(ours, key=lambda r: r["texts_per_s_best"])
        worker = next(r for r in ours if r["method"].endswith("(worker)"))
        out[f"e2e_{name}"] = {
            "st_best": [st_best["method"], st_best["texts_per_s_best"]],
            "ours_best": [ours_best["method"], ours_best["texts_per_s_best"]],
            "ratio_best": round(ours_best["texts_per_s_best"] / st_best["texts_per_s_best"], 2),
            "ratio_worker": round(worker["texts_per_s_best"] / st_best["texts_per_s_best"], 2),
            "ratio_no_dedupe": round(
                max(r["texts_per_s_best"] for r in ours if not r["dedupe"])
                / st_best["texts_per_s_best"],
                2,
            ),
        }
        if name == "short":
            out["short_e2e_met"] = ours_best["texts_per_s_best"] >= SHORT_TARGET
    return out


def print_tables(report: Row) -> None:
    fixed = [r for r in report.get("fixed_shape", []) if "texts_per_s" in r]
    order = list(SHORT_NAME)
    columns = sorted(
        {(r["mode"], r["dtype"]) for r in fixed}, key=lambda c: (order.index(c[1]), c[0] != "eager")
    )
    if columns:
        log("\nfixed shapes, texts/s (k = 1000)")
        log(
            f"{'set':7s}{'L':>4s}{'batch':>7s}"
            + "".join(f"{SHORT_NAME[d] + ' ' + m:>15s}" for m, d in columns)
        )
        cells = {(r["set"], r["batch"], r["mode"], r["dtype"]): r["texts_per_s"] for r in fixed}
        for name, seq in SEQ_LEN.items():
            for batch in sorted({r["batch"] for r in fixed}):
                line = f"{name:7s}{seq:>4d}{batch:>7d}"
                for m, d in columns:
                    value = cells.get((name, batch, m, d))
                    line += f"{value / 1e3:>14,.1f}k" if value else f"{'-':>15s}"
                log(line)
    e2e = [r for r in report.get("end_to_end", []) if "texts_per_s_best" in r]
    if e2e:
        log("\nend to end (encode(texts), best of repeats), texts/s")
        names = list(dict.fromkeys(r["set"] for r in e2e))
        log(f"{'method':36s}" + "".join(f"{n:>14s}" for n in names))
        best = {(r["method"], r["set"]): r["texts_per_s_best"] for r in e2e}
        for method in dict.fromkeys(r["method"] for r in e2e):
            log(
                f"{method:36s}"
                + "".join(
                    f"{best[(method, n)]:>14,.0f}" if (method, n) in best else f"{'-':>14s}"
                    for n in names
                )
            )
    log("\ntargets: " + json.dumps(report.get("targets", {})))
    log(
        "correctness: "
        + json.dumps(
            {
                k: v.get("min")
                for k, v in report.get("correctness", {}).items()
                if isinstance(v, dict) and "min" in v
            }
        )
    )


# -- main ---------------------------------------------------------------------------------------


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no compile: a smoke test")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder (default $OUT, else bench/results)"
    )
    parser.add_argument("--budget-s", type=float, default=250.0, help="whole run, compile included")
    parser.add_argument("--reserve-s", type=float, default=15.0, help="kept back for the report")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: on for cuda unless --quick",
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="default, max-autotune-no-cudagraphs, reduce-overhead, ...",
    )
    parser.add_argument(
        "--compile-shapes",
        choices=("dynamic-batch", "static"),
        default="dynamic-batch",
        help="one compile per length, or per shape",
    )
    parser.add_argument(
        "--compile-cap-s",
        type=float,
        default=60.0,
        help="start no compile with less than this left",
    )
    parser.add_argument(
        "--st-dtype",
        choices=tuple(SHORT_NAME),
        default=None,
        help="sentence-transformers precision (default float16; float32 on cpu)",
    )
    parser.add_argument(
        "--skip-fixed",
        action="store_true",
        help="no fixed-shape phase (with --compile off: a rerun of end to end)",
    )
    parser.add_argument("--min-s", type=float, default=None, help="timed seconds per shape")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per end-to-end row")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument(
        "--phase", choices=("main", "compile"), default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--jsonl", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = tuple(args.batches or (QUICK_BATCHES if args.quick else BATCHES))
    args.min_s = args.min_s if args.min_s is not None else (0.02 if args.quick else 0.15)
    args.repeats = args.repeats or (1 if args.quick else 3)
    cuda = args.device.startswith("cuda")
    args.st_dtype = args.st_dtype or ("float16" if cuda else "float32")  # fp16 crawls on CPUs
    args.eager_dtypes = EAGER_DTYPES if cuda else ("float32",)
    if args.compile == "auto":
        args.compile = "on" if args.device.startswith("cuda") and not args.quick else "off"
    return args


def compile_findings(report: Row) -> None:
    """Compile rows join the fixed-shape table; errors, skips and crashes become warnings."""
    status = report.get("compile", {})
    rows = status.pop("rows", [])
    report["fixed_shape"] = report.get("fixed_shape", []) + rows
    for row in rows:
        if "error" in row or "skipped" in row:
            what = row.get("error") or row.get("skipped")
            report["warnings"].append(
                f"compile {row['dtype']} {row['set']} B={row['batch']}: {what}"
            )
    if status.get("killed_at_deadline"):
        report["warnings"].append(
            f"compile child killed at the deadline after {status.get('seconds')} s, "
            f"{sum('texts_per_s' in r for r in rows)} shapes measured"
        )
    elif status.get("rc") not in (0, None):
        report["warnings"].append(f"compile child exited with status {status['rc']}")


def run_phase(report: Row, name: str, fn: Callable[[], Any], save: Callable[[], None]) -> None:
    start = time.perf_counter()
    log(f"\n== {name}")
    report["phase"] = name
    try:
        report[name] = fn()
    except Exception as exc:
        traceback.print_exc()
        report["failures"].append(f"{name}: {exc!r}"[:500])
    report["phase_seconds"][name] = round(time.perf_counter() - start, 1)
    save()


def main() -> int:
    args = parse()
    isolate()
    if args.phase == "compile":
        compile_child(args)
        return 0
    clock = Clock(time.time() + args.budget_s)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # `timeout`: still write the JSON
    out_dir = args.out or Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "gpu_check.json"
    report: Row = {
        "what": "MiniLM-L6 on one GPU: agreement with CPU fp32 and texts/s",
        "ok": False,
        "failures": [],
        "warnings": [],
        "phase_seconds": {},
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("jsonl", "deadline")
        },
    }

    def save() -> None:
        report["ok"] = not report["failures"]
        report["targets"] = targets(report)
        out_path.write_text(json.dumps(report, indent=2) + "\n")

    started = time.perf_counter()
    try:
        report["env"] = environment(args.device)
        log(json.dumps(report["env"]))
        data = Data(args.model, args.quick)
        report["texts"] = {
            "sets": {n: len(t) for n, t in data.sets.items()},
            "prepared": data.manifest.get("sets"),
            "seq_len": SEQ_LEN,
        }
        run_phase(report, "correctness", lambda: correctness(args, data, report), save)
        run_phase(report, "drain_calls", lambda: drain_calls(args, data), save)
        if not args.skip_fixed:
            run_phase(report, "fixed_shape", lambda: fixed_eager(args, data, clock), save)
        run_phase(report, "end_to_end", lambda: end_to_end(args, data, clock, report), save)
        skipped = [
            r for p in ("fixed_shape", "end_to_end") for r in report.get(p, []) if "skipped" in r
        ]
        if skipped:
            report["warnings"].append(f"{len(skipped)} eager/end-to-end rows skipped: time budget")
        if args.compile == "on":
            run_phase(report, "compile", lambda: compile_parent(args, clock), save)
            compile_findings(report)
        report["phase"] = "done"
    except BaseException as exc:  # SIGTERM from `timeout`, Ctrl-C: say where it stopped
        report["failures"].append(f"interrupted in phase {report.get('phase')}: {exc!r}")
        raise
    finally:
        if "correctness" not in report and not report["failures"]:
            report["failures"].append("the correctness phase did not run")
        report["seconds_total"] = round(time.perf_counter() - started, 1)
        save()
        print_tables(report)
        for warning in report["warnings"]:
            log(f"warning: {warning}")
        log(
            f"\nwrote {out_path}; {report['seconds_total']} s; "
            f"{'OK' if report['ok'] else 'FAILED: ' + '; '.join(report['failures'])}"
        )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
