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


async def test_the_demos_catalogue_titles_are_shared_under_the_configured_ttl(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    """`profiler demo` embeds the catalogue's titles to show what vec_long means: it
    shared them for 7 days whatever PROFILER_EMBEDDING_CACHE_TTL_S said."""
    import io

    from rich.console import Console

    from profiling.embedding_cache import cache_space
    from stream.demo import _show_interests
    from stream.interest_setup import interest_model
    from stream.settings import Settings
    from stream.synthetic_shop import ShopGenerator

    settings = Settings(redis_url=redis_url, encoder_model="hashing", embedding_cache_ttl_s=600)
    model = interest_model(settings, redis_client)
    assert model is not None and model.shared is not None
    shop = ShopGenerator(users=2, seed=3, start_ms=1_750_000_000_000, end_ms=1_750_000_600_000,
                         products=5)  # fmt: skip
    await _show_interests(settings, shop, model, Console(file=io.StringIO()))
    titles = sorted({product.fields["title"] for product in shop.catalog.products})
    ttls = [
        await redis_client.ttl(text_key(cache_space(model.encoder), title).redis_key())
        for title in titles
    ]
    assert all(0 < ttl <= 600 for ttl in ttls), ttls
