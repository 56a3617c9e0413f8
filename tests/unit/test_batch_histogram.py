"""`stream.metrics.BatchHistogram`: a batch of values at once, as prometheus-client's own."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream.metrics import BATCH_SECONDS, BatchHistogram
from stream.settings import Settings


def test_a_batch_histogram_counts_as_prometheus_clients_own_histogram() -> None:
    """Buckets by `le` (a value on a bound counts in it), sum and count, in two batches."""
    values = [0.0, 0.005, 0.0051, 0.3, 1.0, 7.5, 61.0, 1e4]
    buckets = (0.005, 0.01, 0.5, 1, 60)
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    ours = BatchHistogram("h_seconds", "help", buckets, mine)
    ours.observe_all(values[:3])
    ours.observe_all(values[3:])
    reference = Histogram("h_seconds", "help", buckets=buckets, registry=theirs)
    for value in values:
        reference.observe(value)
    for le in ("0.005", "0.01", "0.5", "1.0", "60.0", "+Inf"):
        label = {"le": le}
        assert mine.get_sample_value("h_seconds_bucket", label) == theirs.get_sample_value(
            "h_seconds_bucket", label
        ), le
    assert mine.get_sample_value("h_seconds_count") == theirs.get_sample_value("h_seconds_count")
    assert mine.get_sample_value("h_seconds_sum") == pytest.approx(
        theirs.get_sample_value("h_seconds_sum")
    )
    assert b'h_seconds_bucket{le="1.0"} 5.0' in generate_latest(mine)


def test_a_full_batch_of_new_texts_on_a_cpu_encoder_has_a_bucket_of_its_own() -> None:
    """`profiler_batch_seconds` stopped at 5 s: a batch of the default size whose texts
    no cache held, encoded on a CPU (about 400 texts/s, DESIGN.md §7), fell in +Inf
    with every slower one, so a dashboard could not tell 6 s from a minute."""
    cpu_texts_per_s = 400
    seconds = Settings().batch_max_events / cpu_texts_per_s
    bounds = [bound for bound in BATCH_SECONDS._upper_bounds if bound != math.inf]
    assert any(seconds <= bound <= 3 * seconds for bound in bounds), bounds
    assert max(bounds) >= 4 * seconds
    assert len(bounds) <= 16  # a series per bucket, per worker
