"""Never encode the same text twice: an in-process LRU in front of a shared cache.

Item titles and search queries repeat heavily (popular items are viewed by
thousands of users), and an encoder forward pass costs about a millisecond
per text on a CPU core, while a cache hit costs a few microseconds. So every
text is looked up by (model id, sha1 of the text), first in this process's
`EmbeddingLRU`, then in a shared second level (`EmbeddingCache`: Redis in
production, in stream/), and only the texts missing from both are encoded, in
one encoder call per batch. An encoder on the CPU runs in a worker thread
(`asyncio.to_thread`) so the event loop keeps fetching from Kafka meanwhile;
one on a GPU runs in the loop's own thread (`in_thread`, profiling/encoder.py).

Items are remembered too: an item event with a title stores the title's vector
under (model id, item id), so a later event for the same item that carries no
title reuses it instead of falling back to brand and category words. "Later"
does not depend on batching: an untitled event takes the item's latest title
before it in its own batch first, and only without one the title remembered
from earlier batches, so a replay split into other batches reuses the same titles.

Values in the shared cache are float32 little-endian bytes, like the profile
vectors. A value of the wrong length (another model, a corrupt write) is a miss.
Errors of the shared cache propagate: the batch fails and is replayed, as it
would on any other store error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, NamedTuple, Protocol, cast, runtime_checkable

import numpy as np

from profiling.encoder import Encoder, Vectors
from profiling.events import Event
from profiling.vectors import ITEM_TYPES, Vector, encode_vector, event_text

log = logging.getLogger("profiler.embeddings")

DEFAULT_CAPACITY: Final = 50_000  # ~80 MB of 384-d float32 vectors
DEFAULT_TTL_S: Final = 7 * 86_400
TEXT: Final = "text"
ITEM: Final = "item"


class CacheKey(NamedTuple):
    """What a vector is cached under: its model, the kind of key, and a sha1 hex digest."""

    model_id: str
    kind: str  # TEXT: digest of the text; ITEM: digest of the item id
    digest: str

    def redis_key(self) -> str:
        """The shared-cache key, under the documented `profiler:` prefix."""
        return f"profiler:emb:{self.model_id}:{self.kind}:{self.digest}"


# Memoised whole: titles, queries and item ids repeat batch after batch, and a dict
# probe costs far less than a digest plus a new key tuple.
@lru_cache(maxsize=1 << 15)
def text_key(model_id: str, text: str) -> CacheKey:
    return CacheKey(model_id, TEXT, _sha1(text))


@lru_cache(maxsize=1 << 15)
def item_key(model_id: str, item_id: str) -> CacheKey:
    return CacheKey(model_id, ITEM, _sha1(item_id))


def cache_space(encoder: Encoder) -> str:
    """What cache keys name the encoder by: its `model_id`, unless a setting of its own
    changes some vectors too (the transformer's cut, `TransformerEncoder.cache_space`)."""
    space: str = getattr(encoder, "cache_space", encoder.model_id)
    return space


def _sha1(text: str) -> str:
    # surrogatepass: a JSON "\ud800" escape decodes to a lone surrogate, still a valid key.
    return hashlib.sha1(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


@runtime_checkable
class EmbeddingCache(Protocol):
    """The shared second level (Redis in production): raw vector bytes by key."""

    async def get_many(self, keys: Sequence[CacheKey]) -> list[bytes | None]:
        """One value per key, None where absent; one round trip."""
        ...

    async def set_many(self, items: Sequence[tuple[CacheKey, bytes]], ttl_s: int) -> None:
        """Store every item with a time to live; one round trip."""
        ...


class InMemoryEmbeddingCache:
    """The shared cache's in-memory twin, for tests: a dict that records each item's TTL."""

    def __init__(self) -> None:
        self.values: dict[CacheKey, bytes] = {}
        self.ttls: dict[CacheKey, int] = {}
        self.round_trips = 0

    async def get_many(self, keys: Sequence[CacheKey]) -> list[bytes | None]:
        self.round_trips += 1
        return [self.values.get(key) for key in keys]

    async def set_many(self, items: Sequence[tuple[CacheKey, bytes]], ttl_s: int) -> None:
        self.round_trips += 1
        for key, value in items:
            self.values[key] = value
            self.ttls[key] = ttl_s


class LookupTotals(NamedTuple):
    """Distinct texts and items looked up since start, by where their vector came from."""

    text_lru: int = 0
    text_shared: int = 0
    text_encoded: int = 0
    item_lru: int = 0
    item_shared: int = 0
    item_none: int = 0  # an item no cache remembers: its event's own text is looked up


@dataclass(slots=True)
class EmbeddingStats:
    """Counters of the lookup path, for metrics: where each distinct text's or item's
    vector came from."""

    hits: int = 0  # found in the LRU, texts and items
    misses: int = 0  # not in the LRU, texts and items
    shared_hits: int = 0  # of the texts not in the LRU, found in the shared cache
    encoded: int = 0  # of the texts not in the LRU, run through the encoder
    item_lookups: int = 0  # distinct items of untitled item events looked up
    item_hits: int = 0  # of those, found in the LRU
    item_shared_hits: int = 0  # of those, found in the shared cache
    items_reused: int = 0  # untitled item events that took their item's vector
    encode_seconds: float = 0.0  # waited on encoder calls (tokenise, forward, copy back)

    def totals(self) -> LookupTotals:
        items = self.item_lookups
        return LookupTotals(
            self.hits - self.item_hits,
            self.shared_hits,
            self.encoded,
            self.item_hits,
            self.item_shared_hits,
            items - self.item_hits - self.item_shared_hits,
        )


class EmbeddingLRU:
    """Vectors by `CacheKey`, least recently used evicted first; counts hits and misses.

    Used from the event loop only (no lock); values are read-only float32 rows.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.stats = EmbeddingStats()
        self._entries: OrderedDict[CacheKey, Vector] = OrderedDict()

    def get(self, key: CacheKey) -> Vector | None:
        """The cached vector, now most recently used; counted as a hit or a miss."""
        vector = self._entries.get(key)
        if vector is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return vector

    def get_many(self, keys: Sequence[CacheKey]) -> list[Vector | None]:
        """`get` of every key in order, in one call: a batch's texts without a call each."""
        entries, found, hits = self._entries, [], 0
        for key in keys:
            vector = entries.get(key)
            if vector is not None:
                entries.move_to_end(key)
                hits += 1
            found.append(vector)
        self.stats.hits += hits
        self.stats.misses += len(keys) - hits
        return found

    def peek(self, key: CacheKey) -> Vector | None:
        """The cached vector without counting or refreshing it."""
        return self._entries.get(key)

    def put(self, key: CacheKey, vector: Vector) -> None:
        if not vector.flags.writeable:
            row = vector
        else:
            row = vector.astype(np.float32, copy=True)
            row.flags.writeable = False
        self._entries[key] = row
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


async def embed_texts(
    texts: Sequence[str],
    encoder: Encoder,
    lru: EmbeddingLRU,
    shared: EmbeddingCache | None = None,
    *,
    ttl_s: int = DEFAULT_TTL_S,
) -> Vectors:
    """(len(texts), dim) float32 rows in input order; encodes only what no cache holds."""
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    slot = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    found, _ = await _text_vectors(list(slot), encoder, lru, shared, ttl_s)
    return _rows(found)[[slot[text] for text in texts]]


class EventVectors(NamedTuple):
    """The vectors of the events that contribute one: `events[rows[i]]` has `table[slots[i]]`.

    `table` holds each distinct vector of the batch once (a title many users
    viewed is one row), which is what the fold multiplies (`vectors.contributions`).
    """

    rows: np.ndarray
    slots: np.ndarray
    table: Vectors

    @property
    def vectors(self) -> Vectors:
        """One row per contributing event: `table[slots]`, a copy."""
        return self.table.take(self.slots, axis=0)


async def embed_events(
    events: Sequence[Event],
    encoder: Encoder,
    lru: EmbeddingLRU,
    shared: EmbeddingCache | None = None,
    *,
    ttl_s: int = DEFAULT_TTL_S,
) -> EventVectors:
    """Each event's interest vector (`vectors.event_text`), with item reuse; see the module doc.

    An item event without a title takes the vector of its `item_id`'s latest
    title: the last one before it in `events` (the pipeline passes each user's
    events in event time), else the one remembered from earlier batches, else
    its brand and category words. Events without text (logins) get no row, nor do
    those whose text the encoder gave no finite vector.

    Per event this only finds a slot among the batch's distinct vectors (item
    vectors first, then texts); cache work is per distinct text or item.
    """
    model = cache_space(encoder)
    untitled = {  # `not e.title` first: most events have one, and this runs per event
        e.item_id: item_key(model, e.item_id)
        for e in events
        if (not e.title or e.title.isspace()) and e.item_id is not None and _reuses_item(e)
    }
    items = (
        await _lookup(list(untitled.values()), lru, shared, encoder.dim, items=True)
        if untitled
        else []
    )
    reusable = {i: v for i, v in zip(untitled, items, strict=True) if v is not None}
    # Item id -> the slot of its latest vector so far: remembered ones first, each
    # replaced by the item's title as the batch reaches one (text slots follow the items).
    latest = {item: slot for slot, item in enumerate(reusable)}
    first_text = len(latest)
    texts: dict[str, int] = {}  # distinct text -> its slot after the item vectors
    rows: list[int] = []
    slots: list[int] = []
    reused = 0
    for i, event in enumerate(events):
        item, title = event.item_id, event.title
        if title and event.type in ITEM_TYPES and not title.isspace():  # most: its own title
            slot = texts.setdefault(title, len(texts)) + first_text
            if item:
                latest[item] = slot
        elif item in latest and _reuses_item(event):
            slot = latest[item]
            reused += 1
        elif (text := event_text(event)) is not None:
            slot = texts.setdefault(text, len(texts)) + first_text
        else:
            continue
        rows.append(i)
        slots.append(slot)
    lru.stats.items_reused += reused
    text_vectors, unencodable = await _text_vectors(list(texts), encoder, lru, shared, ttl_s)
    vectors = [*reusable.values(), *text_vectors]
    titles = {item: slot for item, slot in latest.items() if slot >= first_text}
    await _remember_items(titles, vectors, model=model, lru=lru, shared=shared, ttl_s=ttl_s)
    if not rows:
        nothing = np.zeros(0, dtype=np.intp)
        return EventVectors(nothing, nothing, np.zeros((0, encoder.dim), np.float32))
    index, row_slots = np.array(rows, np.intp), np.array(slots, np.intp)
    if unencodable:  # no text, so no row: folded, its zeros still set the sum's scale
        given = ~np.isin(row_slots, [first_text + i for i in unencodable])
        index, row_slots = index[given], row_slots[given]
    return EventVectors(index, row_slots, _rows(vectors))


def _reuses_item(event: Event) -> bool:
    """An item event whose text is not its own: no title (a review: no title and no text);
    a title or text of only white space is none."""
    if event.item_id is None or (event.title and not event.title.isspace()):
        return False
    untold = not event.text or event.text.isspace()
    return event.type in ITEM_TYPES or (event.type == "review" and untold)


async def _text_vectors(
    texts: list[str],
    encoder: Encoder,
    lru: EmbeddingLRU,
    shared: EmbeddingCache | None,
    ttl_s: int,
) -> tuple[list[Vector], list[int]]:
    """One read-only vector per distinct text, in order: the caches first, then one encoder call;
    and the places of the texts the encoder gave no finite vector (zeros there, cached nowhere).

    Fresh rows are frozen before they are cached, so the LRU, the item entries
    remembered from them and the caller share one array (`_remember_items`
    then sees an unchanged title by identity, without comparing 384 floats).
    """
    keys = [text_key(cache_space(encoder), text) for text in texts]
    found = await _lookup(keys, lru, shared, encoder.dim)
    missing = [i for i, vector in enumerate(found) if vector is None]
    unencodable: list[int] = []
    if missing:
        started, fresh_texts = time.perf_counter(), [texts[i] for i in missing]
        try:
            if getattr(encoder, "in_thread", True):
                encoded = await _encoded_aside(encoder, fresh_texts)
            else:
                encoded = encoder.encode(fresh_texts)
        finally:  # a call that failed (out of memory) was waited on too
            lru.stats.encode_seconds += time.perf_counter() - started
        lru.stats.encoded += len(missing)
        fresh = [(keys[i], _frozen_copy(row)) for i, row in zip(missing, encoded, strict=True)]
        finite = cast("list[bool]", np.isfinite(encoded).all(axis=1).tolist())
        if not all(finite):  # an encoder that overflowed: no vector, and nothing cached
            log.warning("the encoder gave %d of %d texts a vector that is not finite: "
                        "they count as no text", finite.count(False), len(finite))  # fmt: skip
            nothing = _frozen_copy(np.zeros(encoder.dim, dtype=np.float32))
            fresh = [(k, v if ok else nothing) for (k, v), ok in zip(fresh, finite, strict=True)]
            unencodable = [i for i, ok in zip(missing, finite, strict=True) if not ok]
        kept = [entry for entry, ok in zip(fresh, finite, strict=True) if ok]
        await _store(kept, lru, shared, ttl_s)
        for i, (_, row) in zip(missing, fresh, strict=True):
            found[i] = row
    return cast("list[Vector]", found), unencodable  # every None was just filled


async def _encoded_aside(encoder: Encoder, texts: list[str]) -> Vectors:
    """`encoder.encode(texts)` on another thread. Cancelled, it has the call stop at its
    next forward pass: a thread runs on after its awaiter is cancelled, and the event
    loop's close waits for it. A stopped worker with a cold cache stayed seconds to
    minutes in one call of a batch's thousands of new texts that no one would read."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(encoder.encode, texts, stop)
    finally:
        stop.set()  # done by now, unless cancelled


async def _remember_items(
    titles: dict[str, int],
    vectors: Sequence[Vector],
    *,
    model: str,
    lru: EmbeddingLRU,
    shared: EmbeddingCache | None,
    ttl_s: int,
) -> None:
    """Store each titled item's title vector (`vectors[slot]`) under its item id.

    Shared only when it changed: the same array object is unchanged for certain.
    """
    changed, peek = [], lru.peek
    for item_id, slot in titles.items():
        key, vector = item_key(model, item_id), vectors[slot]
        known = peek(key)
        # Zeros: a title the encoder gave no finite vector, remembered by nobody.
        if (known is None or (known is not vector and not np.array_equal(known, vector))) and (
            vector.any()
        ):
            changed.append((key, vector))
    await _store(changed, lru, shared, ttl_s)


def _rows(vectors: Sequence[Vector]) -> Vectors:
    """The vectors as one (n, dim) matrix: `np.array` costs a third of `np.stack` on small rows."""
    return np.array(vectors, dtype=np.float32)


def _frozen_copy(row: Vector) -> Vector:
    """A read-only float32 copy: what the LRU keeps (`put` keeps read-only rows as they are)."""
    copy = np.array(row, dtype=np.float32)
    copy.flags.writeable = False
    return copy


async def _lookup(
    keys: Sequence[CacheKey],
    lru: EmbeddingLRU,
    shared: EmbeddingCache | None,
    dim: int,
    *,
    items: bool = False,
) -> list[Vector | None]:
    """One vector per key, None where no cache has it: the LRU, then one shared round trip.
    `items`: the keys are items' (`item_key`), counted apart from texts."""
    found = lru.get_many(keys)
    absent = [i for i, vector in enumerate(found) if vector is None]
    stats = lru.stats
    if items:
        stats.item_lookups += len(keys)
        stats.item_hits += len(keys) - len(absent)
    if shared is None or not absent:
        return found
    values = await shared.get_many([keys[i] for i in absent])
    from_shared = 0
    for i, value in zip(absent, values, strict=True):
        vector = _decode(value, dim)
        if vector is not None:
            lru.put(keys[i], vector)
            found[i] = vector
            from_shared += 1
    if items:
        stats.item_shared_hits += from_shared
    else:
        stats.shared_hits += from_shared
    return found


async def _store(
    items: Sequence[tuple[CacheKey, Vector]],
    lru: EmbeddingLRU,
    shared: EmbeddingCache | None,
    ttl_s: int,
) -> None:
    for key, vector in items:
        lru.put(key, vector)
    if shared is not None and items:
        await shared.set_many([(key, encode_vector(vector)) for key, vector in items], ttl_s)


def _decode(value: bytes | None, dim: int) -> Vector | None:
    """A shared value as a read-only vector; None for absent or malformed values."""
    if value is None or len(value) != 4 * dim:
        return None
    vector = np.frombuffer(value, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        return None
    vector.flags.writeable = False
    return vector
