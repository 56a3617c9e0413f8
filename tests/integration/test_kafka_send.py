"""`kafka.send_all`: the producer's batch API, with what a send per message would do."""

from __future__ import annotations

import asyncio

from aiokafka.partitioner import DefaultPartitioner

from stream import kafka
from tests.conftest import SettingsFactory
from tests.integration.kafka_io import read_topic


async def test_messages_land_where_a_send_would_put_them_in_order(
    make_settings: SettingsFactory,
) -> None:
    settings = await make_settings(partitions=6)
    # Small batches, so they fill up and roll over; one message larger than any batch.
    producer = kafka.producer(settings, max_batch_size=2048, linger_ms=0)
    await producer.start()
    try:
        messages = [
            (settings.topic_updates, f"user-{i % 40}".encode(), f"v{i}".encode() * 20)
            for i in range(500)
        ]
        messages.insert(250, (settings.topic_updates, b"user-7", b"x" * 10_000))
        messages += [(settings.topic_dlq, None, b"no key") for _ in range(5)]
        pending = await kafka.send_all(producer, messages)
        for future in pending:
            await future
    finally:
        await producer.stop()

    records = await read_topic(settings.kafka_bootstrap, settings.topic_updates)
    assert sorted(r.value for r in records) == sorted(
        v for t, _, v in messages if t != settings.topic_dlq
    )
    every = list(range(6))
    for record in records:  # the partition the default partitioner gives the key
        assert record.partition == DefaultPartitioner()(record.key, every, every)
    for key in {r.key for r in records}:  # one key's messages in the order sent
        sent = [v for t, k, v in messages if k == key and t == settings.topic_updates]
        assert [r.value for r in sorted(records, key=lambda r: r.offset) if r.key == key] == sent
    assert len(await read_topic(settings.kafka_bootstrap, settings.topic_dlq)) == 5


async def test_complete_batches_do_not_wait_for_the_linger(make_settings: SettingsFactory) -> None:
    """Every batch `send_all` hands over is whole: it goes out at once, whatever `linger_ms`.

    With a minute's linger, an open batch would hold its acks (and so the
    worker's offset commit) for that minute; the test gives them 20 s.
    """
    settings = await make_settings(partitions=6)
    producer = kafka.producer(settings, linger_ms=60_000)
    await producer.start()
    try:
        messages = [(settings.topic_updates, f"user-{i}".encode(), b"v") for i in range(50)]
        pending = await kafka.send_all(producer, messages)
        await asyncio.wait_for(asyncio.gather(*pending), timeout=20)
    finally:
        await producer.stop()
    assert len(await read_topic(settings.kafka_bootstrap, settings.topic_updates)) == 50
