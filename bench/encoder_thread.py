"""Why a GPU encoder runs in the event loop's thread: a small encode from a thread that
waits for the GIL while another thread runs Python.

A forward pass is hundreds of torch calls, and torch lets go of the GIL around
each. On its own the calling thread takes it straight back; beside a thread
running Python (the worker's event loop fetching, decoding and writing) it waits
up to the interpreter's switch interval (5 ms) each time. A GPU's kernels take
microseconds, so there the waits are nearly all of an encode. This shows the
effect on the CPU with one torch thread and a few short texts (kernels of
microseconds too), three ways: alone, beside a busy Python thread, and beside it
at a 0.2 ms switch interval. Milliseconds per encode, best and median of --calls.

    python bench/encoder_thread.py                   # the MiniLM wheel
    python bench/encoder_thread.py --model bench/gpu_model
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from profiling.encoder import TransformerEncoder

RESULTS = Path(__file__).parent / "results"


def timed(encoder: TransformerEncoder, texts: list[str], calls: int) -> dict[str, float]:
    took = []
    for call in range(calls):  # new texts each call: dedupe and caches see nothing twice
        batch = [f"{text} {call}" for text in texts]
        started = time.perf_counter()
        encoder.encode(batch)
        took.append((time.perf_counter() - started) * 1e3)
    return {"best_ms": round(min(took), 2), "median_ms": round(statistics.median(took), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a local model folder (default: MiniLM)")
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_thread.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = TransformerEncoder(args.model, device="cpu")
    encoder.warm_up()
    texts = [f"Acme widget model {i} deluxe edition" for i in range(args.texts)]

    stop = threading.Event()

    def busy() -> None:  # pure Python, like the event loop between its awaits
        total = 0
        while not stop.is_set():
            for i in range(1000):
                total += i

    rows = {"alone": timed(encoder, texts, args.calls)}
    spinner = threading.Thread(target=busy, daemon=True)
    spinner.start()
    interval = sys.getswitchinterval()
    try:
        rows["beside a busy Python thread"] = timed(encoder, texts, args.calls)
        sys.setswitchinterval(0.0002)
        rows["beside it, switch interval 0.2 ms"] = timed(encoder, texts, args.calls)
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        spinner.join()
    result = {
        "benchmark": "encoder_thread",
        "command": " ".join(["python bench/encoder_thread.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, 1 torch thread",
        "texts_per_encode": args.texts,
        "encode": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
