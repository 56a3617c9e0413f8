"""The worker's processes run numpy's OpenBLAS on one thread unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import stream, os; print(os.environ['OPENBLAS_NUM_THREADS'])"


def run_probe(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=base | env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_one_blas_thread_by_default() -> None:
    assert run_probe() == "1"


def test_an_operators_value_wins() -> None:
    assert run_probe(OPENBLAS_NUM_THREADS="4") == "4"
