"""The machine's own jitter: how long one fixed piece of CPU work takes, again and again.

A latency percentile is only as steady as the machine under it. This times a
fixed, single-threaded piece of Python work (dict and string building, about
1 ms here) every `--every-ms`, in its own process, and reports the spread of
those times. The work never changes, so everything in its spread is the
machine: other processes on the same cores, the host's neighbours, frequency
changes. The median says how fast the machine is right now; p99 over the
median says how much a fixed step can stretch at random.

Alone, for the idle machine (→ `bench/results/noise.json`):

    python bench/noise.py --seconds 20
    python bench/noise.py --seconds 20 --every-ms 0    # back to back: one core busy

`bench/freshness.py` runs `NoiseProbe` beside every feed and reports it with
the run's latencies. The probe costs about 2 % of a core (1 ms in every 50).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from drain import write_report  # bench/drain.py

RESULTS = Path(__file__).parent / "results"
ROUNDS = 5_000  # about 1 ms on this machine on a quiet hour


def fixed_work() -> int:
    """The same CPU work every call: a small dict of tuples and strings, rebuilt."""
    table: dict[int, tuple[int, str]] = {}
    for i in range(ROUNDS):
        table[i % 500] = (i, str(i))
    return len(table)


def sample(seconds: float, every_s: float) -> list[float]:
    """Milliseconds of each `fixed_work` call, one call every `every_s`, for `seconds`."""
    times: list[float] = []
    started = time.monotonic()
    next_at = started
    while time.monotonic() - started < seconds:
        begun = time.perf_counter()
        fixed_work()
        times.append((time.perf_counter() - begun) * 1000)
        next_at += every_s
        if every_s:
            time.sleep(max(0.0, next_at - time.monotonic()))
    return times


def summary(times: list[float]) -> dict[str, Any]:
    """Median, p90, p99 and max of the samples (ms), and p99 over the median."""
    ordered = sorted(times)
    if not ordered:
        return {"samples": 0}

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    median = at(0.5)
    return {
        "samples": len(ordered),
        "p50_ms": round(median, 3),
        "p90_ms": round(at(0.9), 3),
        "p99_ms": round(at(0.99), 3),
        "max_ms": round(ordered[-1], 3),
        "p99_over_p50": round(at(0.99) / median, 2),
    }


class NoiseProbe:
    """`sample` in a child process for `seconds`; `result()` waits for it and summarises.

    probe = NoiseProbe(seconds=15)
    ...                       # the measurement the probe runs beside
    noise = probe.result()
    """

    def __init__(self, seconds: float, every_s: float = 0.05) -> None:
        self._child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(seconds), str(every_s)],
            stdout=subprocess.PIPE,
        )

    def result(self, timeout_s: float = 60.0) -> dict[str, Any]:
        out, _ = self._child.communicate(timeout=timeout_s)
        return summary(json.loads(out)) if self._child.returncode == 0 else {"samples": 0}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        seconds, every_s = float(sys.argv[2]), float(sys.argv[3])
        print(json.dumps(sample(seconds, every_s)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every-ms", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "noise.json")
    args = parser.parse_args()
    noise = summary(sample(args.seconds, args.every_ms / 1000))
    write_report(args.out, "noise", seconds=args.seconds, every_ms=args.every_ms, **noise)
    print(json.dumps(noise))


if __name__ == "__main__":
    main()
