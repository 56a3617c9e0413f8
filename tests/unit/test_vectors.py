"""Interest vectors against a from-scratch numpy recomputation, in any batch split."""

from __future__ import annotations

import copy
import itertools
import math
import threading
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiling.embedding_cache import EmbeddingLRU, InMemoryEmbeddingCache, text_key
from profiling.encoder import HashingEncoder
from profiling.events import Event
from profiling.interests import InterestModel
from profiling.pipeline import Record, Stages, apply_batch
from profiling.profile import ProfileParams
from profiling.store import InMemoryProfileStore
from profiling.vectors import (
    DEFAULT_VECTOR_WEIGHTS,
    MS_PER_DAY,
    MS_PER_HOUR,
    Contributions,
    Horizon,
    Interest,
    InterestState,
    VectorParams,
    advance,
    advance_batch,
    contributions,
    cosine_drift,
    cosine_drifts,
    decode_sketch,
    decode_vector,
    drift_sketch,
    drift_sketches,
    encode_vector,
    event_text,
    event_weight,
)

DIM = 16
T0 = 1_750_000_000_000
PARAMS = VectorParams(long_half_life_ms=2 * MS_PER_DAY, short_half_life_ms=MS_PER_HOUR)


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    rows = rng.normal(size=(n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def random_rows(seed: int, n: int, users: int = 1) -> Contributions:
    """Events over three days, some late, weights of every sign the defaults use."""
    rng = np.random.default_rng(seed)
    weights = np.array([w for w in DEFAULT_VECTOR_WEIGHTS.values() if w != 0.0])
    return Contributions(
        user=rng.integers(0, users, size=n).astype(np.intp),
        ts=(T0 + rng.integers(0, 3 * MS_PER_DAY, size=n)).astype(np.int64),
        weight=rng.choice(weights, size=n).astype(np.float64),
        vectors=unit_rows(rng, n),
    )


def subset(rows: Contributions, index: Sequence[int] | np.ndarray) -> Contributions:
    picked = np.asarray(index, dtype=np.intp)
    return rows.take(picked)


def oracle(rows: Contributions, half_life_ms: float, ref_ms: int) -> tuple[np.ndarray, float]:
    """Direction and log2 norm of sum w * 2**(-(ref - ts)/h) * v, straight from the definition."""
    gains = rows.weight * np.exp2(-(ref_ms - rows.ts) / half_life_ms)
    total = (gains[:, None] * rows.vectors.astype(np.float64)).sum(axis=0)
    norm = float(np.linalg.norm(total))
    return total / norm, math.log2(norm)


def fold_in_batches(rows: Contributions, cuts: Sequence[int]) -> InterestState:
    state = InterestState.empty(DIM)
    bounds = [0, *sorted(cuts), len(rows.ts)]
    for start, end in itertools.pairwise(bounds):
        state = advance(state, subset(rows, range(start, end)), PARAMS)
    return state


def assert_matches_oracle(state: InterestState, rows: Contributions) -> None:
    ref = int(rows.ts.max())
    assert state.ref_ms == ref
    for interest, half_life in (
        (state.long, PARAMS.long_half_life_ms),
        (state.short, PARAMS.short_half_life_ms),
    ):
        direction, log2_norm = oracle(rows, half_life, ref)
        np.testing.assert_allclose(interest.direction, direction, atol=1e-5)
        assert math.isclose(interest.log2_norm, log2_norm, abs_tol=1e-6)
        assert math.isclose(float(np.linalg.norm(interest.direction)), 1.0, abs_tol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    shuffle=st.booleans(),
)
def test_any_batch_split_equals_the_oracle(
    seed: int, n: int, cuts: list[int], shuffle: bool
) -> None:
    rows = random_rows(seed, n)
    if shuffle:  # arrival order is not event-time order
        rows = subset(rows, np.random.default_rng(seed + 1).permutation(n))
    state = fold_in_batches(rows, [c for c in cuts if c <= n])
    assert_matches_oracle(state, rows)


def test_one_event_per_batch_over_a_long_log() -> None:
    rows = random_rows(11, 400)
    state = fold_in_batches(rows, list(range(1, 400)))
    assert_matches_oracle(state, rows)


def test_many_users_in_one_call_equal_one_user_at_a_time() -> None:
    rows = random_rows(5, 300, users=7)
    first = advance_batch([InterestState.empty(DIM)] * 7, subset(rows, range(150)), PARAMS)
    together = advance_batch(first, subset(rows, range(150, 300)), PARAMS)
    for user, state in enumerate(together):
        mine = subset(rows, np.flatnonzero(rows.user == user))
        mine = mine._replace(user=np.zeros(len(mine.ts), dtype=np.intp))
        assert_matches_oracle(state, mine)


def test_a_table_of_shared_vectors_folds_like_a_vector_per_row() -> None:
    rng = np.random.default_rng(8)
    table = unit_rows(rng, 5)  # five distinct texts, many events each
    slot = rng.integers(0, 5, size=200).astype(np.intp)
    per_row = random_rows(9, 200, users=6)._replace(vectors=table[slot])
    per_row = per_row._replace(weight=np.where(slot == 3, 0.0, per_row.weight))  # dropped rows
    shared = per_row._replace(vectors=table, slot=slot)
    shuffled = rng.permutation(200)  # users arrive unsorted
    empty = [InterestState.empty(DIM)] * 6
    expected = advance_batch(empty, per_row.take(shuffled), PARAMS)
    folded = advance_batch(empty, shared.take(shuffled), PARAMS)
    for state, want in zip(folded, expected, strict=True):
        for got_horizon, want_horizon in ((state.long, want.long), (state.short, want.short)):
            np.testing.assert_allclose(got_horizon.direction, want_horizon.direction, atol=1e-6)
            assert math.isclose(got_horizon.log2_norm, want_horizon.log2_norm, abs_tol=1e-9)


def test_inputs_are_not_mutated() -> None:
    rows = random_rows(3, 40, users=3)
    states = advance_batch([InterestState.empty(DIM)] * 3, subset(rows, range(20)), PARAMS)
    rows_before, states_before = copy.deepcopy(rows), copy.deepcopy(states)
    advance_batch(states, subset(rows, range(20, 40)), PARAMS)
    for column, before in zip(rows, rows_before, strict=True):
        np.testing.assert_array_equal(column, before)
    for state, before in zip(states, states_before, strict=True):
        assert state.ref_ms == before.ref_ms
        np.testing.assert_array_equal(state.long.direction, before.long.direction)
        assert state.short.log2_norm == before.short.log2_norm
    assert not states[0].long.direction.flags.writeable


def event(kind: str, ts: int = T0, **fields: object) -> Event:
    return Event(event_id=f"e{ts}{kind}", user_id="u1", type=kind, ts=ts, **fields)  # type: ignore[arg-type]


def test_events_without_text_leave_the_vectors_unchanged() -> None:
    rows = random_rows(8, 10)
    state = advance(InterestState.empty(DIM), rows, PARAMS)
    logins = [event("login", int(rows.ts.max()) + k * 60_000) for k in range(1, 4)]
    assert all(event_text(e) is None for e in logins)
    none = contributions(logins, np.zeros((3, DIM), np.float32), [0, 0, 0], PARAMS)
    assert len(none.ts) == 0
    later = logins[-1].ts
    after = advance(state, none, PARAMS, new_ref_ms=later)
    assert after.long.published() == state.long.published()
    assert after.short.published() == state.short.published()
    # Only the norms decay, to the new reference: exactly as the oracle's would.
    shift = (later - state.ref_ms) / PARAMS.short_half_life_ms
    assert math.isclose(after.short.log2_norm, state.short.log2_norm - shift)
    assert after.ref_ms == later


def test_remove_from_cart_moves_away_from_the_item() -> None:
    rng = np.random.default_rng(4)
    liked, item = unit_rows(rng, 6), unit_rows(rng, 1)
    views = Contributions(
        np.zeros(7, np.intp),
        T0 + np.arange(7, dtype=np.int64) * 1000,
        np.ones(7),
        np.vstack([liked, item]),
    )
    before = advance(InterestState.empty(DIM), views, PARAMS)
    removal = contributions(
        [event("remove_from_cart", T0 + 10_000, item_id="i1", title="x")], item, [0], PARAMS
    )
    assert removal.weight[0] < 0
    after = advance(before, removal, PARAMS)
    for old, new in ((before.long, after.long), (before.short, after.short)):
        assert float(new.direction @ item[0]) < float(old.direction @ item[0])


def test_old_references_neither_overflow_nor_underflow() -> None:
    rng = np.random.default_rng(9)
    v_old, v_new = unit_rows(rng, 2)
    year = 365 * MS_PER_DAY
    first = Contributions(np.zeros(1, np.intp), np.array([T0 - 20 * year]), np.ones(1), v_old[None])
    second = Contributions(np.zeros(1, np.intp), np.array([T0]), np.ones(1), v_new[None])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        state = advance(InterestState.empty(DIM), first, PARAMS)
        state = advance(state, second, PARAMS)
        # A fresh user whose only text event is decades older than its reference.
        late = advance(InterestState.empty(DIM, ref_ms=T0), first, PARAMS)
    np.testing.assert_allclose(state.short.direction, v_new, atol=1e-6)
    np.testing.assert_allclose(late.short.direction, v_old, atol=1e-6)
    assert math.isfinite(late.short.log2_norm) and late.short.log2_norm < -1e5


def test_a_sum_that_cancels_out_becomes_empty() -> None:
    v = unit_rows(np.random.default_rng(2), 1)
    rows = Contributions(
        np.zeros(2, np.intp), np.array([T0, T0]), np.array([0.5, -0.5]), np.vstack([v, v])
    )
    state = advance(InterestState.empty(DIM), rows, PARAMS)
    assert state.long.is_empty and state.long.published() is None


def test_a_sum_that_cancels_across_batches_becomes_empty() -> None:
    """Stored as float32, the first batch's direction is about 1e-7 off the item's row:
    what was left after the removal passed for a vector (a unit vector of noise)."""
    v = unit_rows(np.random.default_rng(2), 1)
    view = Contributions(np.zeros(1, np.intp), np.array([T0]), np.array([0.5]), v)
    removal = Contributions(np.zeros(1, np.intp), np.array([T0]), np.array([-0.5]), v)
    state = advance(advance(InterestState.empty(DIM), view, PARAMS), removal, PARAMS)
    assert state.long.is_empty and state.short.is_empty


def test_new_reference_below_the_batch_is_refused() -> None:
    rows = random_rows(1, 3)
    with pytest.raises(ValueError, match="new_ref_ms"):
        advance(InterestState.empty(DIM), rows, PARAMS, new_ref_ms=int(rows.ts.max()) - 1)


def test_event_texts() -> None:
    assert event_text(event("view", item_id="i", title="Nike Air Shoes")) == "Nike Air Shoes"
    assert event_text(event("click", item_id="i", brand="Nike", category="fashion.shoes")) == (
        "Nike fashion shoes"
    )
    assert event_text(event("purchase", amount=3.0, category="home.air_fryer")) == "home air fryer"
    assert event_text(event("search", query="red sneakers")) == "red sneakers"
    assert event_text(event("review", item_id="i", title="Mixer", text="Love it")) == (
        "Mixer. Love it"
    )
    assert event_text(event("review", item_id="i", text="Love it")) == "Love it"
    assert event_text(event("remove_from_cart", item_id="i", title="Kettle")) == "Kettle"
    assert event_text(event("view", item_id="i")) is None
    assert event_text(event("login", success=True)) is None
    # White space alone says nothing (it would encode all the same, to one vector for all).
    assert event_text(event("view", item_id="i", title=" ", brand="Garmin")) == "Garmin"
    assert event_text(event("search", query="\t ")) is None
    assert event_text(event("review", item_id="i", title="Mixer", text="  ")) == "Mixer"


def test_weights_rank_the_event_types() -> None:
    order = ["purchase", "add_to_cart", "click", "review", "view", "search"]
    ws = [event_weight(event(kind), PARAMS) for kind in order]
    assert ws == sorted(ws, reverse=True) and len(set(ws)) == len(ws) and ws[-1] > 0
    assert event_weight(event("remove_from_cart"), PARAMS) < 0
    assert event_weight(event("login"), PARAMS) == 0
    custom = VectorParams(weights={"view": 7.0})
    assert event_weight(event("view"), custom) == 7.0 and event_weight(event("click"), custom) == 0


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="half-lives"):
        VectorParams(short_half_life_ms=0)
    with pytest.raises(ValueError, match="finite"):
        VectorParams(weights={"view": math.nan})


def test_published_bytes_round_trip_and_fit_the_profile_budget() -> None:
    rows = random_rows(6, 5)
    state = advance(
        InterestState.empty(384),
        rows._replace(vectors=unit_rows(np.random.default_rng(6), 5, 384)),
        PARAMS,
    )
    data = state.long.published()
    assert data is not None and len(data) == 384 * 4
    again = Interest.from_stored(data, state.long.log2_norm, 384)
    np.testing.assert_array_equal(again.direction, state.long.direction)
    assert Interest.from_stored(data[:-4], 0.0, 384).is_empty
    assert Interest.from_stored(None, 0.0, 384).is_empty
    assert np.frombuffer(data, dtype="<f4")[0] == state.long.direction[0]


def test_cosine_drift() -> None:
    a, b = unit_rows(np.random.default_rng(7), 2)
    assert cosine_drift(a, a) == pytest.approx(0.0, abs=1e-6)
    assert cosine_drift(encode_vector(a), -a) == pytest.approx(2.0, abs=1e-6)
    assert cosine_drift(a, b) == pytest.approx(1.0 - float(a @ b), abs=1e-6)
    assert cosine_drift(None, a) == 1.0 and cosine_drift(a, None) == 1.0
    assert cosine_drift(None, None) == 0.0
    assert cosine_drift(a, decode_vector(encode_vector(a))) == pytest.approx(0.0, abs=1e-6)


def test_a_drift_sketch_measures_drift_like_the_full_vector() -> None:
    rng = np.random.default_rng(12)
    published, *later = unit_rows(rng, 20, 384)
    sketch = drift_sketch(published)
    assert len(sketch) == 384
    assert cosine_drift(decode_sketch(sketch), published) < 1e-4
    for current in later:
        exact = cosine_drift(published, current)
        assert cosine_drift(decode_sketch(sketch), current) == pytest.approx(exact, abs=1e-3)
    assert cosine_drift(decode_sketch(drift_sketch(np.zeros(4))), np.ones(4)) == 1.0


def test_the_batch_forms_match_the_one_user_forms() -> None:
    """`Horizon` and the row-wise drift helpers are what the pipeline uses; each must
    agree exactly with the one-vector form the rest of this file checks."""
    rng = np.random.default_rng(13)
    good = unit_rows(rng, 3)
    stored: list[tuple[bytes | None, float | None]] = [
        (encode_vector(good[0]), 1.5),
        (None, 1.0),
        (encode_vector(good[1]), None),
        (encode_vector(good[1]), math.inf),
        (encode_vector(good[1])[:-4], 0.0),  # another dimension
        (encode_vector(np.full(DIM, np.nan, np.float32)), 0.0),
        (encode_vector(good[2]), -3.0),
    ]
    horizon = Horizon.from_stored([d for d, _ in stored], [n for _, n in stored], DIM)
    published = horizon.published()
    for u, (data, log2_norm) in enumerate(stored):
        one = Interest.from_stored(data, log2_norm, DIM)
        np.testing.assert_array_equal(horizon.directions[u], one.direction)
        assert horizon.log2_norms[u] == one.log2_norm and published[u] == one.published()
    assert Interest.from_stored(b"\x00" * 5, 0.0, DIM).is_empty  # not whole float32s
    rows = np.vstack([unit_rows(rng, 5), np.zeros((1, DIM), np.float32)])
    codes = drift_sketches(rows)
    drifts = cosine_drifts(codes, rows[::-1])
    for u, row in enumerate(rows):
        assert codes[u].tobytes() == drift_sketch(row)
        assert drifts[u] == cosine_drift(decode_sketch(drift_sketch(row)), rows[::-1][u])


def shop_record(offset: int, user: str, kind: str, ts: int, **fields: object) -> Record:
    body = {"event_id": f"{user}-{offset}", "user_id": user, "type": kind, "ts": ts, **fields}
    return Record("events", 0, offset, user.encode(), orjson.dumps(body))


async def test_the_model_stores_each_users_oracle_vectors() -> None:
    encoder, params = HashingEncoder(dim=DIM), PARAMS
    model = InterestModel(encoder, EmbeddingLRU(), params=params)
    texts = ["trail running shoes", "steel kettle", "tent", "red sneakers"]
    rng = np.random.default_rng(21)
    batch, bodies = [], []
    for offset in range(60):
        user, kind = f"u{offset % 3}", str(rng.choice(["view", "add_to_cart", "search", "login"]))
        text = texts[int(rng.integers(0, len(texts)))]
        ts = T0 + int(rng.integers(0, 2 * MS_PER_DAY))
        fields = {"query": text} if kind == "search" else {"item_id": text, "title": text}
        fields = {"success": True} if kind == "login" else fields
        batch.append(shop_record(offset, user, kind, ts, **fields))
        bodies.append((user, kind, ts, text))
    store = InMemoryProfileStore()
    now = T0 + 2 * MS_PER_DAY
    result = await apply_batch(batch, store, ProfileParams(), lambda: now, Stages(interests=model))
    assert not result.dead_letters
    loaded = await store.load([f"u{u}" for u in range(3)])
    for user, got in loaded.items():
        mine = [(k, ts, t) for u, k, ts, t in bodies if u == user and k != "login"]
        rows = Contributions(
            np.zeros(len(mine), np.intp),
            np.array([ts for _, ts, _ in mine], dtype=np.int64),
            np.array([params.weights[k] for k, _, _ in mine]),
            encoder.encode([t for _, _, t in mine]),
        )
        interest = got.interest
        assert interest is not None and interest.sketch is not None  # a new user publishes
        for data, half_life in (
            (interest.vec_long, params.long_half_life_ms),
            (interest.vec_short, params.short_half_life_ms),
        ):
            assert data is not None
            direction, _ = oracle(rows, half_life, got.last_seen)
            np.testing.assert_allclose(decode_vector(data), direction, atol=1e-5)


async def test_the_model_publishes_when_the_long_vector_drifts() -> None:
    model = InterestModel(HashingEncoder(dim=DIM), EmbeddingLRU(), params=PARAMS)
    store, quiet = InMemoryProfileStore(), ProfileParams(heartbeat_ms=10 * MS_PER_DAY)

    async def send(offset: int, kind: str, title: str, n: int = 1) -> list[str]:
        batch = [
            shop_record(offset + k, "u1", kind, T0 + offset + k, item_id=title, title=title)
            for k in range(n)
        ]
        result = await apply_batch(batch, store, quiet, lambda: T0, Stages(interests=model))
        assert not result.dead_letters
        return [orjson.loads(body)["changed"] for _, body in result.changes]

    assert len(await send(0, "view", "red running shoes")) == 1  # a new user
    assert await send(10, "view", "red running shoes") == []  # same interest: no drift
    loaded = await store.load(["u1"])
    sketch_before = loaded["u1"].interest.sketch  # type: ignore[union-attr]
    [changed] = await send(20, "add_to_cart", "cast iron skillet", n=6)
    assert "vec_long" in changed
    interest = (await store.load(["u1"]))["u1"].interest
    assert interest is not None and interest.vec_long is not None
    assert interest.sketch == drift_sketch(decode_vector(interest.vec_long)) != sketch_before


async def test_a_long_vector_that_comes_back_after_cancelling_out_is_published() -> None:
    """The sketch of the vector before it cancelled out stayed: the message said the
    vector was gone, and its return, close to that sketch, went unpublished."""
    model = InterestModel(HashingEncoder(dim=DIM), EmbeddingLRU(), params=PARAMS)
    store, quiet = InMemoryProfileStore(), ProfileParams(heartbeat_ms=10 * MS_PER_DAY)
    skillet = {"item_id": "s", "title": "iron skillet"}
    batches = [
        [shop_record(0, "u1", "view", T0, **skillet)],
        [shop_record(n, "u1", "remove_from_cart", T0, **skillet) for n in (1, 2)],  # cancels
        [shop_record(3, "u1", "view", T0 + 1000, **skillet)],
    ]
    sent = []
    for batch in batches:
        result = await apply_batch(batch, store, quiet, lambda: T0, Stages(interests=model))
        interest = (await store.load(["u1"]))["u1"].interest
        assert interest is not None
        changed = [orjson.loads(body)["changed"] for _, body in result.changes]
        sent.append((interest.vec_long is not None, ["vec_long" in c for c in changed]))
    assert sent == [(True, [True]), (False, [True]), (True, [True])]


async def test_another_encoders_vectors_are_not_folded_with_this_ones() -> None:
    """Most encoders give 384 dimensions: the stored sum of another one was folded with
    this one's vectors (a space of its own) and labelled with this one's name."""
    store, quiet = InMemoryProfileStore(), ProfileParams()
    before, after = HashingEncoder(dim=DIM, seed=1), HashingEncoder(dim=DIM, seed=2)

    async def send(encoder: HashingEncoder, offset: int, user: str, kind: str) -> list[str]:
        record = shop_record(offset, user, kind, T0 + offset, item_id="s", title="iron skillet")
        stages = Stages(interests=InterestModel(encoder, EmbeddingLRU(), params=PARAMS))
        result = await apply_batch([record], store, quiet, lambda: T0, stages)
        assert not result.dead_letters
        return [field for _, body in result.changes for field in orjson.loads(body)["changed"]]

    for user in ("u1", "u2"):
        await send(before, 0, user, "view")
    await send(after, 10, "u1", "view")
    # No text: nothing of the earlier encoder stays, and the message says so.
    assert {"vec_long", "vec_short", "model"} <= set(await send(after, 10, "u2", "login"))
    u1, u2 = (await store.load(["u1", "u2"])).values()
    assert u1.model == after.model_id and u1.interest and u1.interest.vec_long
    own = after.encode(["iron skillet"])[0]
    assert float(decode_vector(u1.interest.vec_long) @ own) == pytest.approx(1.0, abs=1e-5)
    assert u2.model == after.model_id and u2.interest and u2.interest.vec_long is None


async def test_vectors_under_a_former_id_of_the_same_model_are_kept() -> None:
    """A model folder was named by its name alone: its vectors are the same space."""
    store, renamed = InMemoryProfileStore(), HashingEncoder(dim=DIM)
    record = shop_record(0, "u1", "view", T0, item_id="s", title="iron skillet")
    stages = Stages(interests=InterestModel(renamed, EmbeddingLRU(), params=PARAMS))
    await apply_batch([record], store, ProfileParams(), lambda: T0, stages)
    renamed.former_ids = (renamed.model_id,)  # type: ignore[attr-defined]
    renamed.model_id = "model-0123456789abcdef"
    login = shop_record(1, "u1", "login", T0 + 1)
    await apply_batch([login], store, ProfileParams(), lambda: T0, stages)
    profile = (await store.load(["u1"]))["u1"]
    assert profile.model == renamed.model_id
    assert profile.interest is not None and profile.interest.vec_long is not None


class OverflowingEncoder(HashingEncoder):
    """A hashing encoder whose rows for one text are NaN, as an fp16 overflow gives."""

    def encode(self, texts: Sequence[str], stop: threading.Event | None = None) -> np.ndarray:
        rows = super().encode(texts)
        rows[[text == "overflow" for text in texts]] = np.nan
        return rows


async def test_a_vector_the_encoder_could_not_give_leaves_the_users_interest() -> None:
    """A NaN row was cached (Redis too) and emptied the user's vectors in the fold."""
    encoder, store, shared = (
        OverflowingEncoder(dim=DIM),
        InMemoryProfileStore(),
        InMemoryEmbeddingCache(),
    )
    model = InterestModel(encoder, EmbeddingLRU(), shared, params=PARAMS)
    for offset, title in ((0, "iron skillet"), (1, "overflow")):
        record = shop_record(offset, "u1", "view", T0 + offset, item_id=title, title=title)
        await apply_batch([record], store, ProfileParams(), lambda: T0, Stages(interests=model))
    interest = (await store.load(["u1"]))["u1"].interest
    assert interest is not None and interest.vec_long is not None
    own = encoder.encode(["iron skillet"])[0]
    assert float(decode_vector(interest.vec_long) @ own) == pytest.approx(1.0, abs=1e-5)
    assert not any(np.isnan(np.frombuffer(v, "<f4")).any() for v in shared.values.values())
    assert text_key(encoder.model_id, "overflow") not in shared.values


async def test_a_text_the_encoder_could_not_give_a_vector_is_no_text() -> None:
    """Its zero row still set the scale of the fold: a day after the last view, the
    decayed short-term sum looked cancelled out next to it and was emptied."""

    async def interest_after(second: Record) -> tuple[bytes | None, ...]:
        store = InMemoryProfileStore()
        model = InterestModel(OverflowingEncoder(dim=DIM), EmbeddingLRU(), params=PARAMS)
        first = shop_record(0, "u1", "view", T0, item_id="s", title="iron skillet")
        for record in (first, second):
            await apply_batch([record], store, ProfileParams(), lambda: T0, Stages(model))
        interest = (await store.load(["u1"]))["u1"].interest
        assert interest is not None
        return interest.vec_long, interest.vec_short

    login = shop_record(1, "u1", "login", T0 + MS_PER_DAY, success=True)
    overflow = shop_record(1, "u1", "view", T0 + MS_PER_DAY, item_id="o", title="overflow")
    expected = await interest_after(login)
    assert expected[1] is not None  # decayed, not gone
    assert await interest_after(overflow) == expected


async def assert_same_vectors_whole_and_split(batch: list[Record], cuts: list[int]) -> None:
    """u1's vectors from `batch` in one batch and cut at `cuts` are the same."""

    async def vectors(parts: list[list[Record]]) -> tuple[bytes | None, bytes | None]:
        store = InMemoryProfileStore()
        model = InterestModel(HashingEncoder(dim=DIM), EmbeddingLRU(), params=PARAMS)
        for part in parts:
            await apply_batch(part, store, ProfileParams(), lambda: T0, Stages(interests=model))
        interest = (await store.load(["u1"]))["u1"].interest
        assert interest is not None
        return interest.vec_long, interest.vec_short

    whole = await vectors([batch])
    bounds = [0, *cuts, len(batch)]
    split = await vectors([batch[a:b] for a, b in itertools.pairwise(bounds)])
    for one, other in zip(whole, split, strict=True):
        assert one is not None and other is not None
        np.testing.assert_allclose(decode_vector(one), decode_vector(other), atol=1e-5)


@pytest.mark.parametrize("cuts", [[1], [2], [1, 3], [1, 2, 3]])
async def test_the_model_gives_the_same_vectors_however_the_batches_split(
    cuts: list[int],
) -> None:
    """Stored vectors carry the time they are decayed to, so a later batch decays them."""
    titles = ["red running shoes", "steel kettle", "camping tent", "crime novel"]
    gaps = [0, 2 * MS_PER_HOUR, 3 * MS_PER_DAY, 3 * MS_PER_DAY + 5 * 60_000]
    batch = [
        shop_record(i, "u1", "view", T0 + gap, item_id=f"i{i}", title=title)
        for i, (gap, title) in enumerate(zip(gaps, titles, strict=True))
    ]

    await assert_same_vectors_whole_and_split(batch, cuts)


@pytest.mark.parametrize("cuts", [[1], [2], [3], [1, 4], [2, 3, 5]])
async def test_untitled_item_events_reuse_the_same_titles_however_the_batches_split(
    cuts: list[int],
) -> None:
    """An untitled event takes its item's latest title before it, in its batch or an earlier one."""
    events: list[tuple[str, dict[str, object]]] = [
        ("view", {"item_id": "sku-1", "title": "Garmin Forerunner 55 running watch"}),
        ("add_to_cart", {"item_id": "sku-1", "category": "kitchen.blender"}),
        ("purchase", {"item_id": "sku-2", "amount": 9.5, "category": "garden.grill"}),
        ("view", {"item_id": "sku-2", "title": "Weber kettle grill"}),
        ("view", {"item_id": "sku-1", "title": "Garmin Forerunner 55, black"}),
        ("click", {"item_id": "sku-1", "brand": "Garmin"}),
        ("add_to_cart", {"item_id": "sku-2"}),
    ]
    batch = [
        shop_record(i, "u1", kind, T0 + i * 60_000, **fields)
        for i, (kind, fields) in enumerate(events)
    ]

    await assert_same_vectors_whole_and_split(batch, cuts)
