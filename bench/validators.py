"""Which validator for the hot path: msgspec vs jsonschema-rs vs fastjsonschema, per event.

Each candidate parses and validates the same realistic events (synthetic shop,
every type) against the v1 contract; msgspec decodes straight into the typed
`Event` (profiling.events.decode_event, rules included), the schema validators
run on orjson-parsed dicts against schemas/behavior_event.v1.json. Reported:
microseconds per event, best of 5 rounds. fastjsonschema is none of the
project's dependencies: install it first (`pip install fastjsonschema`).

    python bench/validators.py
    python bench/validators.py --out /tmp/validators.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from drain import write_report  # bench/drain.py

from profiling.events import decode_event
from stream.synthetic_shop import ShopGenerator
from stream.worker import wall_clock_ms

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"


def best_us(check: Callable[[bytes], object], values: list[bytes], rounds: int = 5) -> float:
    """Microseconds per value, the best of `rounds` passes over all of them."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for value in values:
            check(value)
        best = min(best, time.perf_counter() - started)
    return best / len(values) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "validators.json")
    args = parser.parse_args()
    import fastjsonschema
    import jsonschema_rs

    now = wall_clock_ms()
    shop = ShopGenerator(users=2000, seed=5, start_ms=now - 3_600_000, end_ms=now)
    values = [value for _, value in shop.records(20_000)]
    schema = json.loads((ROOT / "schemas" / "behavior_event.v1.json").read_text())
    rs = jsonschema_rs.validator_for(schema)
    fast = fastjsonschema.compile(schema)
    results = {}
    for name, check in {
        "msgspec (decode_event)": lambda v: decode_event(v, now),
        "orjson + jsonschema-rs": lambda v: rs.is_valid(orjson.loads(v)),
        "orjson + fastjsonschema": lambda v: fast(orjson.loads(v)),
        "orjson parse only": orjson.loads,
    }.items():
        results[name] = round(best_us(check, values), 2)
    write_report(args.out, "validators", events=len(values), us_per_event=results)
    sys.stdout.write(args.out.read_text())


if __name__ == "__main__":
    main()
