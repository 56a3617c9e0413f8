"""Building the vector stage from settings: the encoder, its caches, the Redis shared cache.

Encoders are loaded once per process and shared by every worker in it (the
model is the expensive part, and the Faust app or a test may run several
workers in one process).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

import redis.asyncio as aioredis

from profiling.embedding_cache import CacheKey, EmbeddingLRU
from profiling.encoder import Encoder, EncoderUnavailableError, HashingEncoder, TransformerEncoder
from profiling.interests import InterestModel
from profiling.vectors import MS_PER_DAY, MS_PER_HOUR, VectorParams
from stream.settings import Settings

log = logging.getLogger("profiler.encoder")


class RedisEmbeddingCache:
    """Embeddings shared by every worker: `profiler:emb:…` strings with a TTL."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def get_many(self, keys: Sequence[CacheKey]) -> list[bytes | None]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key.redis_key())
        return list(await pipe.execute())

    async def set_many(self, items: Sequence[tuple[CacheKey, bytes]], ttl_s: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key.redis_key(), value, ex=ttl_s or None)
        await pipe.execute()


@lru_cache(maxsize=4)
def load_encoder(name: str, device: str | None, max_tokens: int) -> Encoder | None:
    """The encoder `name` names (see `Settings.encoder_model`), loaded once per process."""
    if name == "none":
        return None
    if name == "hashing":
        return HashingEncoder()
    path = None if name in ("auto", "minilm") else name
    try:
        encoder = TransformerEncoder(path, device=device, max_tokens=max_tokens)
    except EncoderUnavailableError as exc:
        if name != "auto":
            raise
        log.warning("no interest vectors: %s", exc)
        return None
    log.info("encoder %s on %s (%s)", encoder.model_id, encoder.device, encoder.precision)
    return encoder


def interest_model(settings: Settings, client: aioredis.Redis) -> InterestModel | None:
    """The worker's vector stage, or None when no encoder is configured or installed."""
    encoder = load_encoder(settings.encoder_model, settings.device, settings.encoder_max_tokens)
    if encoder is None:
        return None
    params = VectorParams(
        long_half_life_ms=settings.vector_long_half_life_days * MS_PER_DAY,
        short_half_life_ms=settings.vector_short_half_life_hours * MS_PER_HOUR,
    )
    shared = RedisEmbeddingCache(client) if settings.embedding_cache_ttl_s else None
    return InterestModel(
        encoder=encoder,
        lru=EmbeddingLRU(settings.embedding_cache_size),
        shared=shared,
        params=params,
        drift_threshold=settings.vector_drift_threshold,
        cache_ttl_s=settings.embedding_cache_ttl_s,
    )
