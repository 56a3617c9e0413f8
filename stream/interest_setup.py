"""Building the vector stage from settings: the encoder, its caches, the Redis shared cache.

Encoders are loaded once per process and shared by every worker in it (the
model is the expensive part, and the Faust app or a test may run several
workers in one process).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from profiling.embedding_cache import CacheKey, EmbeddingLRU
from profiling.encoder import (
    DeviceUnavailableError,
    Encoder,
    EncoderUnavailableError,
    HashingEncoder,
    TransformerEncoder,
)
from profiling.interests import InterestModel
from profiling.vectors import MS_PER_DAY, MS_PER_HOUR, VectorParams
from stream.redis_store import eval_pipelined
from stream.settings import Settings

log = logging.getLogger("profiler.encoder")


# SET ... EX for each key of the call (no expiry with a TTL of 0): MSET sets no TTL.
SET_MANY_SCRIPT: Final = """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if ttl > 0 then
    redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
  else
    redis.call('SET', key, ARGV[i + 1])
  end
end
return #KEYS
"""
KEYS_PER_CALL: Final = 1000  # bounds one call's time in Redis and one reply's size


class RedisEmbeddingCache:
    """Embeddings shared by every worker: `profiler:emb:…` strings with a TTL.

    On a single node, reads are MGETs and writes a script call per
    `KEYS_PER_CALL` keys, all in one round trip: a pipeline of one GET or SET
    per key cost the client 22 and 31 µs per key (redis-py builds and parses
    every command in Python), MGET 2.7 and the script 4.6
    (bench/shared_cache.py). On Redis Cluster the keys of a call lie in
    different hash slots, so reads are one MGET per slot and writes one SET
    per key.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._cluster = isinstance(client, RedisCluster)
        self._shas: dict[str, str] = {}

    async def get_many(self, keys: Sequence[CacheKey]) -> list[bytes | None]:
        names = [key.redis_key() for key in keys]
        if not names:
            return []
        if self._cluster:
            return list(await self.client.mget_nonatomic(names))  # type: ignore[attr-defined]
        pipe = self.client.pipeline(transaction=False)
        for i in range(0, len(names), KEYS_PER_CALL):
            pipe.mget(names[i : i + KEYS_PER_CALL])
        return [value for reply in await pipe.execute() for value in reply]

    async def set_many(self, items: Sequence[tuple[CacheKey, bytes]], ttl_s: int) -> None:
        if not items:
            return
        if self._cluster:
            pipe = self.client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key.redis_key(), value, ex=ttl_s or None)
            await pipe.execute()
            return
        calls = []
        for i in range(0, len(items), KEYS_PER_CALL):
            chunk = items[i : i + KEYS_PER_CALL]
            names = [key.redis_key() for key, _ in chunk]
            calls.append((SET_MANY_SCRIPT, names, [max(ttl_s, 0), *(v for _, v in chunk)]))
        await eval_pipelined(self.client, self._shas, calls)  # SET may run twice: idempotent


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
        # `auto` goes without vectors when the encoder is not installed, not when it is
        # and the device set for it cannot be used.
        if name != "auto" or isinstance(exc, DeviceUnavailableError):
            raise
        log.warning("no interest vectors: %s", exc)
        return None
    took = encoder.warm_up()
    log.info(
        "encoder %s on %s (%s), first pass %.2f s",
        encoder.model_id, encoder.device, encoder.precision, took,
    )  # fmt: skip
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
