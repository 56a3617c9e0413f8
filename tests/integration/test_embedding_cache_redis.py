"""The shared embedding cache on a real redis-server: batched reads and writes, TTLs."""

from __future__ import annotations

import redis.asyncio as aioredis

from profiling.embedding_cache import item_key, text_key
from stream.interest_setup import KEYS_PER_CALL, RedisEmbeddingCache


async def test_many_keys_round_trip_in_order_with_their_ttl(redis_client: aioredis.Redis) -> None:
    cache = RedisEmbeddingCache(redis_client)
    keys = [text_key("m", f"text {i}") for i in range(2 * KEYS_PER_CALL + 5)]  # three calls
    keys.append(item_key("m", "item 1"))
    values = [i.to_bytes(4, "little") * 3 for i in range(len(keys))]
    await cache.set_many(list(zip(keys, values, strict=True)), ttl_s=600)
    absent = text_key("m", "never stored")
    assert await cache.get_many([absent, *keys, absent]) == [None, *values, None]
    assert 590 <= await redis_client.ttl(keys[-2].redis_key()) <= 600
    assert await cache.get_many([]) == []


async def test_a_ttl_of_zero_keeps_the_vector_for_good(redis_client: aioredis.Redis) -> None:
    cache = RedisEmbeddingCache(redis_client)
    key = text_key("m", "forever")
    await cache.set_many([(key, b"v1")], ttl_s=0)
    assert await redis_client.ttl(key.redis_key()) == -1  # exists, no expiry
    assert await cache.get_many([key]) == [b"v1"]


async def test_writes_go_on_after_the_server_forgot_the_script(
    redis_client: aioredis.Redis,
) -> None:
    cache = RedisEmbeddingCache(redis_client)
    first, second = text_key("m", "first"), text_key("m", "second")
    await cache.set_many([(first, b"a")], ttl_s=60)
    await redis_client.script_flush()  # a restart, or SCRIPT FLUSH by an operator
    await cache.set_many([(second, b"b")], ttl_s=60)
    assert await cache.get_many([first, second]) == [b"a", b"b"]
