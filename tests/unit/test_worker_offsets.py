"""What a worker commits and where it resumes: the offset after each partition's highest."""

from __future__ import annotations

from aiokafka import TopicPartition

from profiling.pipeline import Record
from stream.worker import next_offsets


def test_next_offsets_per_partition_and_topic() -> None:
    records = [
        Record("events", 0, 7, b"u", b"{}"),
        Record("events", 1, 3, b"u", b"{}"),
        Record("events", 0, 5, b"u", b"{}"),  # out of order: the highest still counts
        Record("labels", 0, 41, b"u", b"{}"),
        Record("events", 0, 9, b"u", b"{}"),
    ]
    assert next_offsets(records) == {
        TopicPartition("events", 0): 10,
        TopicPartition("events", 1): 4,
        TopicPartition("labels", 0): 42,
    }
    assert next_offsets([]) == {}
