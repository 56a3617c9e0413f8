"""The embedding cache: only misses reach the encoder, off the event loop; items are reused."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from profiling.embedding_cache import (
    CacheKey,
    EmbeddingCache,
    EmbeddingLRU,
    InMemoryEmbeddingCache,
    embed_events,
    embed_texts,
    item_key,
    text_key,
)
from profiling.encoder import HashingEncoder, Vectors
from profiling.events import Event
from stream import metrics


class CountingEncoder:
    """A real HashingEncoder that records what it was asked to encode, and on which thread."""

    def __init__(self) -> None:
        self.inner = HashingEncoder(dim=32)
        self.model_id, self.dim = self.inner.model_id, self.inner.dim
        self.calls: list[list[str]] = []
        self.threads: set[int] = set()

    def encode(self, texts: Sequence[str], stop: threading.Event | None = None) -> Vectors:
        self.calls.append(list(texts))
        self.threads.add(threading.get_ident())
        return self.inner.encode(texts)

    @property
    def encoded(self) -> list[str]:
        return [text for call in self.calls for text in call]


def event(i: int, kind: str, **fields: object) -> Event:
    return Event(event_id=f"e{i}", user_id="u", type=kind, ts=1_750_000_000_000 + i, **fields)  # type: ignore[arg-type]


async def test_returns_the_encoders_rows_in_input_order_encoding_each_text_once() -> None:
    encoder, lru = CountingEncoder(), EmbeddingLRU()
    texts = ["red shoes", "blender", "red shoes", "tent", "blender"]
    rows = await embed_texts(texts, encoder, lru)
    np.testing.assert_array_equal(rows, encoder.inner.encode(texts))
    assert sorted(encoder.encoded) == ["blender", "red shoes", "tent"]
    assert lru.stats.misses == 3 and lru.stats.encoded == 3 and lru.stats.hits == 0


async def test_a_second_batch_hits_the_lru_and_encodes_only_new_texts() -> None:
    encoder, lru = CountingEncoder(), EmbeddingLRU()
    await embed_texts(["red shoes", "blender"], encoder, lru)
    rows = await embed_texts(["blender", "kettle", "red shoes"], encoder, lru)
    assert encoder.calls[-1] == ["kettle"]
    assert lru.stats.hits == 2
    np.testing.assert_array_equal(rows, encoder.inner.encode(["blender", "kettle", "red shoes"]))
    await embed_texts(["blender"], encoder, lru)
    assert len(encoder.calls) == 2  # all hits: no encoder call at all


async def test_the_encoder_runs_off_the_event_loop_thread() -> None:
    encoder, lru = CountingEncoder(), EmbeddingLRU()
    await embed_texts(["tent"], encoder, lru)
    assert threading.get_ident() not in encoder.threads
    assert lru.stats.encode_seconds > 0


async def test_an_encoder_that_says_so_runs_on_the_event_loop_thread() -> None:
    """A GPU encoder (`in_thread = False`): no thread waiting for the GIL between launches."""
    encoder, lru = CountingEncoder(), EmbeddingLRU()
    encoder.in_thread = False
    await embed_texts(["tent", "kettle"], encoder, lru)
    assert encoder.threads == {threading.get_ident()} and encoder.encoded == ["tent", "kettle"]
    assert lru.stats.encode_seconds > 0
    assert HashingEncoder.in_thread is False  # pure Python: a thread would only wait


async def test_the_shared_cache_serves_another_process() -> None:
    shared = InMemoryEmbeddingCache()
    assert isinstance(shared, EmbeddingCache)
    first = CountingEncoder()
    rows = await embed_texts(["red shoes", "tent"], first, EmbeddingLRU(), shared, ttl_s=60)
    key = text_key(first.model_id, "tent")
    assert shared.ttls[key] == 60 and len(shared.values[key]) == 4 * first.dim
    other, lru = CountingEncoder(), EmbeddingLRU()  # a fresh worker: empty LRU
    again = await embed_texts(["tent", "red shoes"], other, lru, shared)
    assert other.calls == []
    assert lru.stats.shared_hits == 2
    np.testing.assert_array_equal(again, rows[::-1])


async def test_a_malformed_shared_value_is_a_miss() -> None:
    shared, encoder = InMemoryEmbeddingCache(), CountingEncoder()
    shared.values[text_key(encoder.model_id, "tent")] = b"\x00" * 7
    rows = await embed_texts(["tent"], encoder, EmbeddingLRU(), shared)
    assert encoder.encoded == ["tent"]
    np.testing.assert_array_equal(rows, encoder.inner.encode(["tent"]))
    assert len(shared.values[text_key(encoder.model_id, "tent")]) == 4 * encoder.dim


async def test_empty_input_asks_nobody() -> None:
    shared, encoder = InMemoryEmbeddingCache(), CountingEncoder()
    rows = await embed_texts([], encoder, EmbeddingLRU(), shared)
    assert rows.shape == (0, encoder.dim) and shared.round_trips == 0 and encoder.calls == []


def test_lru_evicts_the_least_recently_used_and_counts() -> None:
    lru = EmbeddingLRU(capacity=2)
    a, b, c = (text_key("m", t) for t in "abc")
    vector = np.ones(4, dtype=np.float32)
    lru.put(a, vector)
    lru.put(b, vector)
    assert lru.get(a) is not None  # a is now the most recent
    lru.put(c, vector)
    assert b not in lru and a in lru and c in lru and len(lru) == 2
    assert lru.get(b) is None
    assert (lru.stats.hits, lru.stats.misses) == (1, 1)
    assert lru.peek(a) is not None and lru.stats.hits == 1
    stored = lru.get(a)
    assert stored is not None and not stored.flags.writeable
    vector[0] = 9.0  # the cache holds its own copy
    assert stored[0] == 1.0
    with pytest.raises(ValueError, match="capacity"):
        EmbeddingLRU(capacity=0)


def test_get_many_is_get_of_each_key_in_one_call() -> None:
    lru = EmbeddingLRU(capacity=3)
    a, b, c, d = (text_key("m", t) for t in "abcd")
    for key in (a, b, c):
        lru.put(key, np.full(4, ord(key.digest[0]), dtype=np.float32))
    got = lru.get_many([b, d, a])
    assert got[1] is None and got[0] is lru.peek(b) and got[2] is lru.peek(a)
    assert (lru.stats.hits, lru.stats.misses) == (2, 1)
    lru.put(d, np.zeros(4, dtype=np.float32))  # c, now the least recently used, goes
    assert c not in lru and a in lru and b in lru


async def test_a_fresh_title_and_its_item_share_one_cached_row() -> None:
    encoder, lru = CountingEncoder(), EmbeddingLRU()
    view = event(0, "view", item_id="i1", title="Kettle")
    got = await embed_events([view], encoder, lru)
    text_row = lru.peek(text_key(encoder.model_id, "Kettle"))
    assert text_row is not None and lru.peek(item_key(encoder.model_id, "i1")) is text_row
    assert not text_row.flags.writeable
    np.testing.assert_array_equal(got.vectors[0], text_row)


def test_keys_separate_models_kinds_and_texts() -> None:
    assert text_key("m1", "x") != text_key("m2", "x")
    assert text_key("m", "x") != item_key("m", "x")
    key = text_key("minilm", "x")
    assert key == CacheKey("minilm", "text", "11f6ad8ec52a2984abaafd7c3b516503785c2072")
    assert key.redis_key() == f"profiler:emb:minilm:text:{key.digest}"
    assert len(text_key("m", "\ud800 lone surrogate").digest) == 40


async def test_events_get_their_text_vectors_and_logins_get_none() -> None:
    encoder, lru = CountingEncoder(), EmbeddingLRU()
    events = [
        event(0, "view", item_id="i1", title="Nike Air Running Shoes"),
        event(1, "login", success=True),
        event(2, "search", query="trail shoes"),
        event(3, "review", item_id="i2", title="Tent", text="Leaks in the rain"),
    ]
    got = await embed_events(events, encoder, lru)
    assert got.rows.tolist() == [0, 2, 3]
    expected = encoder.inner.encode(
        ["Nike Air Running Shoes", "trail shoes", "Tent. Leaks in the rain"]
    )
    np.testing.assert_array_equal(got.vectors, expected)


async def test_an_untitled_item_event_reuses_the_items_vector() -> None:
    shared, encoder, lru = InMemoryEmbeddingCache(), CountingEncoder(), EmbeddingLRU()
    titled = event(0, "view", item_id="i1", title="Nike Air Running Shoes", brand="Nike")
    await embed_events([titled], encoder, lru, shared)
    assert item_key(encoder.model_id, "i1") in shared.values
    untitled = [
        event(1, "add_to_cart", item_id="i1", brand="Nike", category="fashion.shoes"),
        event(2, "purchase", item_id="i9", amount=5.0, brand="Weber", category="garden.grill"),
    ]
    got = await embed_events(untitled, encoder, lru, shared)
    title_vector = encoder.inner.encode(["Nike Air Running Shoes"])[0]
    np.testing.assert_array_equal(got.vectors[0], title_vector)
    np.testing.assert_array_equal(got.vectors[1], encoder.inner.encode(["Weber garden grill"])[0])
    assert encoder.encoded == ["Nike Air Running Shoes", "Weber garden grill"]
    assert lru.stats.items_reused == 1
    # Another worker with an empty LRU finds the item through the shared cache.
    other = CountingEncoder()
    again = await embed_events(untitled[:1], other, EmbeddingLRU(), shared)
    np.testing.assert_array_equal(again.vectors[0], title_vector)
    assert other.calls == []


async def test_a_title_of_white_space_is_no_title() -> None:
    """It was encoded (to one vector every blank-titled item shared) and became the
    item's remembered title."""
    shared, encoder, lru = InMemoryEmbeddingCache(), CountingEncoder(), EmbeddingLRU()
    await embed_events([event(0, "view", item_id="i1", title="Weber Kettle")], encoder, lru, shared)
    blank = [
        event(1, "view", item_id="i1", title=" "),
        event(2, "view", item_id="i2", title="\t", brand="Garmin", category="sports.watch"),
        event(3, "search", query="  "),
    ]
    got = await embed_events(blank, encoder, lru, shared)
    assert encoder.encoded == ["Weber Kettle", "Garmin sports watch"]
    assert len(got.vectors) == 2 and lru.stats.items_reused == 1


async def test_a_titled_event_keeps_its_own_title_beside_an_untitled_one() -> None:
    encoder, lru = CountingEncoder(), EmbeddingLRU()
    await embed_events([event(0, "view", item_id="i1", title="Old kettle")], encoder, lru)
    batch = [
        event(1, "add_to_cart", item_id="i1"),  # no title: the item's remembered vector
        event(2, "view", item_id="i1", title="New kettle"),  # renamed: its own title
    ]
    got = await embed_events(batch, encoder, lru)
    old, new = encoder.inner.encode(["Old kettle", "New kettle"])
    np.testing.assert_array_equal(got.vectors, np.stack([old, new]))


async def test_an_untitled_event_takes_its_batchs_earlier_title_before_the_remembered_one() -> None:
    """The title an untitled event reuses is the item's latest before it, whatever the batches."""
    encoder, lru = CountingEncoder(), EmbeddingLRU()
    await embed_events([event(0, "view", item_id="i1", title="Old kettle")], encoder, lru)
    batch = [
        event(1, "add_to_cart", item_id="i1"),  # before the rename: the remembered title
        event(2, "view", item_id="i1", title="New kettle"),
        event(3, "purchase", item_id="i1", amount=20.0),  # after it: this batch's title
        event(4, "add_to_cart", item_id="i2", category="kitchen.toaster"),  # titled only later
        event(5, "view", item_id="i2", title="Steel toaster"),
        event(6, "remove_from_cart", item_id="i2"),
    ]
    got = await embed_events(batch, encoder, lru)
    kettle, toaster = ["Old kettle", "New kettle", "New kettle"], ["kitchen toaster"]
    expected = encoder.inner.encode([*kettle, *toaster, "Steel toaster", "Steel toaster"])
    np.testing.assert_array_equal(got.vectors, expected)
    assert lru.stats.items_reused == 3
    # The batch's last title is what the next batch remembers.
    later = await embed_events([event(7, "click", item_id="i1")], encoder, lru)
    np.testing.assert_array_equal(later.vectors[0], expected[1])


async def test_repeated_views_do_not_rewrite_the_shared_item_entry() -> None:
    shared, encoder, lru = InMemoryEmbeddingCache(), CountingEncoder(), EmbeddingLRU()
    view = event(0, "view", item_id="i1", title="Kettle")
    await embed_events([view], encoder, lru, shared)
    trips = shared.round_trips
    await embed_events([view, view], encoder, lru, shared)
    assert shared.round_trips == trips  # text and item both known: no shared traffic


async def test_no_events_give_no_rows() -> None:
    got = await embed_events([event(0, "login")], CountingEncoder(), EmbeddingLRU())
    assert got.rows.shape == (0,) and got.vectors.shape == (0, 32)


async def test_the_embeddings_metric_tells_item_lookups_from_text_lookups() -> None:
    """An untitled item event's lookup of its item's vector was counted in
    profiler_embeddings as a text found (and in the hit ratio of texts), and one of an
    item never seen not at all."""
    shared, encoder = InMemoryEmbeddingCache(), CountingEncoder()
    await embed_events([event(0, "view", item_id="i1", title="Weber Kettle")], encoder,
                       EmbeddingLRU(), shared)  # fmt: skip
    lru = EmbeddingLRU()  # another worker: the item only in the shared cache
    batch = [
        event(1, "add_to_cart", item_id="i1"),  # the item's vector, from the shared cache
        event(2, "purchase", item_id="i9", brand="Garmin", category="sports.watch"),  # none
        event(3, "search", query="tent"),
    ]

    def sample(kind: str, source: str) -> float:
        labels = {"kind": kind, "source": source}
        return metrics.REGISTRY.get_sample_value("profiler_embeddings_total", labels) or 0.0

    counts = [(kind, source) for kind in ("text", "item") for source in ("lru", "shared")]
    counts += [("text", "encoded"), ("item", "none")]
    before = {pair: sample(*pair) for pair in counts}
    counted = lru.stats.totals()
    await embed_events(batch, encoder, lru, shared)
    metrics.observe_embeddings(counted, lru.stats.totals())
    assert {pair: sample(*pair) - before[pair] for pair in counts} == {
        ("text", "lru"): 0,
        ("text", "shared"): 0,
        ("text", "encoded"): 2,  # the purchase's brand and category, the query
        ("item", "lru"): 0,
        ("item", "shared"): 1,
        ("item", "none"): 1,
    }
    assert metrics.REGISTRY.get_sample_value("profiler_embedding_cache_hit_ratio") == 0.0
