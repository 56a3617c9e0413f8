"""The metrics an operator builds dashboards and alerts on are the ones the README lists."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from stream import metrics

README = Path(__file__).parents[2] / "README.md"
KINDS = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The README's metrics table: name -> (kind, label names)."""
    section = README.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(profiler_\w+)` \| (\w+) \|([^|]*)\|", section, re.MULTILINE)
    return {name: (kind, tuple(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric of the worker's registry: name -> (kind, label names)."""
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, metrics.BatchHistogram):  # ours: no labels
            found[value.name] = ("histogram", ())
        for cls, kind in KINDS.items():
            if isinstance(value, cls):
                found[value._name] = (kind, tuple(value._labelnames))
    return found


def test_the_readme_lists_every_metric_with_its_kind_and_labels() -> None:
    assert documented() == registered()


def test_the_process_and_the_garbage_collector_are_in_the_metrics_and_the_readme() -> None:
    """RSS and the collector's young collections are what "flat memory" and the young
    threshold are watched by (BENCHMARKS.md)."""
    served = metrics.REGISTRY.get_sample_value
    assert (served("process_resident_memory_bytes") or 0) > 0
    assert served("python_gc_collections_total", {"generation": "0"}) is not None
    text = README.read_text()
    assert "`process_resident_memory_bytes`" in text
    assert "`python_gc_collections_total`" in text
