"""Interest vectors end to end: the real MiniLM encoder in a worker, the real broker and Redis."""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis

from profiling.encoder import HashingEncoder
from profiling.events import Event, decode_event
from profiling.vectors import VectorParams, event_text, event_weight
from stream import metrics
from stream.interest_setup import load_encoder
from stream.producing import send_records
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator
from stream.worker import BatchWorker, wall_clock_ms
from tests.integration.kafka_io import drain, read_topic

pytest.importorskip("torch", reason="the encoder extra (torch, transformers) is not installed")

HOUR_MS = 3_600_000


def shop(n: int) -> list[tuple[bytes, bytes]]:
    now = wall_clock_ms()
    generator = ShopGenerator(
        users=40, seed=21, start_ms=now - 6 * HOUR_MS, end_ms=now, products=120
    )
    return list(generator.records(n))


def oracle_vectors(
    records: list[tuple[bytes, bytes]], dim: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """From scratch: Σ w · 2^(-(last_seen - ts)/h) · encode(text) per user, both horizons."""
    encoder = load_encoder("minilm", None, 128)
    assert encoder is not None
    params = VectorParams()
    per_user: dict[str, list[Event]] = defaultdict(list)
    now = wall_clock_ms()
    for _, value in records:
        event = decode_event(value, now)
        assert isinstance(event, Event)
        per_user[event.user_id].append(event)
    result = {}
    for user, events in per_user.items():
        last_seen = max(e.ts for e in events)
        texts = [(e, event_text(e)) for e in events]
        texts = [(e, t) for e, t in texts if t is not None and event_weight(e, params)]
        if not texts:
            continue
        vectors = encoder.encode([t for _, t in texts]).astype(np.float64)
        ts = np.array([e.ts for e, _ in texts], dtype=np.float64)
        weight = np.array([event_weight(e, params) for e, _ in texts])
        sums = []
        for half_life in (params.long_half_life_ms, params.short_half_life_ms):
            coef = weight * np.exp2(-(last_seen - ts) / half_life)
            total = coef @ vectors
            sums.append(total / np.linalg.norm(total))
        result[user] = (sums[0], sums[1])
    return result


async def test_every_profile_that_saw_text_has_the_oracle_vectors(make_settings) -> None:
    settings: Settings = await make_settings(encoder_model="minilm", vector_in_updates=True)
    records = shop(1200)
    await send_records(settings, records)
    await drain(settings)

    expected = oracle_vectors(records, 384)
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        for user, (want_long, want_short) in expected.items():
            stored = await client.hmget(f"profile:{{{user}}}", ["vec_long", "vec_short", "model"])
            got_long = np.frombuffer(stored[0], dtype="<f4")
            got_short = np.frombuffer(stored[1], dtype="<f4")
            assert got_long.shape == (384,) and got_short.shape == (384,)
            assert abs(np.linalg.norm(got_long) - 1) < 1e-5
            # The same sum, batch by batch through the worker, as from scratch.
            assert float(got_long @ want_long) > 1 - 1e-5
            assert float(got_short @ want_short) > 1 - 1e-5
            assert stored[2] == b"sentence-transformers/all-MiniLM-L6-v2"
    finally:
        await client.aclose()
    updates = await read_topic(settings.kafka_bootstrap, settings.topic_updates)
    with_vector = [orjson.loads(u.value) for u in updates if b'"vec_long"' in u.value]
    assert with_vector
    assert len(base64.b64decode(with_vector[0]["vec_long"])) == 384 * 4


async def test_a_warm_cache_encodes_nothing(make_settings) -> None:
    settings: Settings = await make_settings(encoder_model="minilm")
    records = shop(600)
    await send_records(settings, records)
    waited_before = metrics.REGISTRY.get_sample_value("profiler_encoder_seconds_total") or 0.0
    cold = await drain(settings)
    assert cold.texts_encoded > 0 and cold.encode_s > 0
    waited = metrics.REGISTRY.get_sample_value("profiler_encoder_seconds_total")
    assert waited == pytest.approx(waited_before + cold.encode_s)
    # Forget the profiles, keep the shared embeddings, replay everything with a new group.
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        for pattern in ("profile:*", "profile-state:*"):
            async for key in client.scan_iter(match=pattern):
                await client.delete(key)
        assert [key async for key in client.scan_iter(match="profiler:emb:*")]
    finally:
        await client.aclose()
    replay = settings.model_copy(update={"group_id": settings.group_id + "-again"})
    shared_before = (
        metrics.REGISTRY.get_sample_value(
            "profiler_embeddings_total", {"kind": "text", "source": "shared"}
        )
        or 0.0
    )
    worker = BatchWorker(replay)
    assert worker.stages.interests is not None
    stats = await drain(replay, worker=worker)
    assert stats.applied == len(records)
    cache = worker.stages.interests.lru.stats
    assert cache.encoded == 0
    assert stats.texts_encoded == 0 and stats.encode_s == 0
    assert cache.shared_hits > 0
    shared_after = metrics.REGISTRY.get_sample_value(
        "profiler_embeddings_total", {"kind": "text", "source": "shared"}
    )
    assert shared_after == shared_before + cache.shared_hits
    assert metrics.REGISTRY.get_sample_value("profiler_embedding_cache_hit_ratio") is not None


async def test_lookups_and_encoder_waits_of_a_failed_fold_are_counted(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder fails on the first batch (say CUDA out of memory), which is then
    applied user by user: the metrics and the stats count those lookups and encodes, and
    the wait on the call that failed, as any other batch's. They were counted only after
    a fold that succeeded: the failed call's wait never, the batch's lookups never in
    profiler_embeddings_total, and a run ending on it summed none of its encodes."""
    settings: Settings = await make_settings(encoder_model="hashing", partitions=1)
    real = HashingEncoder.encode
    calls: list[int] = []

    def failing_once(self: HashingEncoder, texts: Sequence[str]) -> np.ndarray:
        calls.append(len(texts))
        if len(calls) == 1:
            time.sleep(0.2)
            raise RuntimeError("CUDA out of memory")
        return real(self, texts)

    monkeypatch.setattr(HashingEncoder, "encode", failing_once)
    await send_records(settings, shop(300))

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    encoded_before = sample("profiler_embeddings_total", {"kind": "text", "source": "encoded"})
    waited_before = sample("profiler_encoder_seconds_total")
    worker = BatchWorker(settings)
    assert worker.stages.interests is not None
    stats = await drain(settings, worker=worker)
    assert stats.applied == 300 and stats.dead_letters == 0 and len(calls) > 1
    totals = worker.stages.interests.lru.stats
    assert stats.texts_encoded == totals.encoded > 0
    assert sample("profiler_embeddings_total", {"kind": "text", "source": "encoded"}) == (
        encoded_before + totals.encoded
    )
    assert stats.encode_s == totals.encode_seconds >= 0.2
    assert sample("profiler_encoder_seconds_total") == pytest.approx(waited_before + stats.encode_s)
