"""Decayed interest vectors: which text an event contributes, and the event-time fold.

A user's long- and short-term interest is an exponentially decayed sum in event
time, like category affinity (`profiling.profile`): an event at `ts` with weight
`w` and text vector `v` adds `w * 2**(-(R - ts)/h) * v` to the sum kept at the
reference time `R`, and moving `R` forward scales the whole sum by one factor.
The sum does not depend on arrival order or batch split; the published vector
is its direction.

Stored state, and why it is this small. The sum `S` is kept as its direction
`u = S/|S|` (float32, exactly the published `vec_long` / `vec_short` bytes) and
one scalar, `log2 |S|` at the reference time. That is the whole sum, so no
extra 384-d array per user is needed: a profile holds two 1.5 KB vectors plus
two numbers, inside the 4 KB budget. The magnitude is kept as a base-2
logarithm because decay is a shift there: moving the reference by `d` ms
subtracts `d/h` and can neither overflow nor underflow, however old the
reference (a 1-hour half-life over one year is a factor 2**-8760, which a
float64 cannot hold). A fold factors out the largest exponent among the old sum
and the new rows, so every factor it computes lies in (0, 1]. float32 storage
of `u` costs about 1e-7 relative per batch, far inside the 1e-5 the oracle
tests hold incremental folds to. Only near-total cancellation (negative
weights undoing a sum) could amplify it, and such a sum is reset to empty.

The fold is vectorised across a batch's users: `advance_batch` takes every
contributing event of the batch as rows (user index, ts, weight, vector) and
returns each user's new state.

The "drifted since the last publication" rule needs the last published
vector; `drift_sketch` keeps it as 384 int8 codes (a quarter of a vector),
enough for `cosine_drift` to within about 1e-5.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from profiling.events import Event

MS_PER_HOUR: Final = 3_600_000
MS_PER_DAY: Final = 24 * MS_PER_HOUR
ITEM_TYPES: Final = frozenset({"view", "click", "add_to_cart", "remove_from_cart", "purchase"})
"""Events whose text is the item's own title (or, without one, its brand and category)."""

# purchase > add_to_cart > click > review > view > search; removing from the cart
# says a little against the item.
DEFAULT_VECTOR_WEIGHTS: Final[Mapping[str, float]] = {
    "purchase": 4.0,
    "add_to_cart": 2.5,
    "click": 1.5,
    "review": 1.2,
    "view": 1.0,
    "search": 0.8,
    "remove_from_cart": -0.5,
    "login": 0.0,
}
# A fold whose result is this small next to its largest term has cancelled
# itself out: its direction would be rounding noise, so it becomes empty.
_CANCELLED: Final = 1e-9

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class VectorParams:
    """Half-lives and per-type weights of the interest vectors."""

    long_half_life_ms: float = 30 * MS_PER_DAY
    short_half_life_ms: float = MS_PER_HOUR
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_VECTOR_WEIGHTS))

    def __post_init__(self) -> None:
        for half_life in (self.long_half_life_ms, self.short_half_life_ms):
            if not (math.isfinite(half_life) and half_life > 0):
                raise ValueError(f"half-lives must be finite and > 0, got {half_life}")
        if not all(math.isfinite(w) for w in self.weights.values()):
            raise ValueError("event weights must be finite")


def event_text(event: Event) -> str | None:
    """The text an event says the user is interested in, or None (it contributes nothing).

    Item events: the title, else brand and category words (`electronics.smartphone`
    reads `electronics smartphone`). Search: the query. Review: the review text,
    after the item title when there is one. Logins and empty fields: nothing.
    """
    kind = event.type
    if kind in ITEM_TYPES:
        return event.title or item_fallback_text(event)
    if kind == "search":
        return event.query or None
    if kind == "review":
        parts = [part for part in (event.title, event.text) if part]
        return ". ".join(parts) if parts else item_fallback_text(event)
    return None


def item_fallback_text(event: Event) -> str | None:
    """Brand and category words: what an item event says when it carries no title."""
    words = [event.brand or "", (event.category or "").replace(".", " ").replace("_", " ")]
    text = " ".join(" ".join(words).split())
    return text or None


def event_weight(event: Event, params: VectorParams) -> float:
    """How far one event of this type pulls the vectors (0: not at all, < 0: away)."""
    return params.weights.get(event.type, 0.0)


@dataclass(frozen=True, slots=True, eq=False)  # arrays: compare fields, not states
class Interest:
    """One decayed sum: its unit direction (float32) and log2 of its norm at the reference.

    Empty (no contribution yet, or cancelled out): an all-zero direction and
    `log2_norm = -inf`; it has no published vector.
    """

    direction: Vector
    log2_norm: float

    @classmethod
    def empty(cls, dim: int) -> Interest:
        return cls(_frozen(np.zeros(dim, dtype=np.float32)), -math.inf)

    @classmethod
    def from_stored(cls, data: bytes | None, log2_norm: float | None, dim: int) -> Interest:
        """Rebuild from the stored vector bytes and norm; missing or malformed is empty."""
        if data is None or log2_norm is None or not math.isfinite(log2_norm):
            return cls.empty(dim)
        direction = decode_vector(data)
        if direction.shape != (dim,) or not np.all(np.isfinite(direction)):
            return cls.empty(dim)
        return cls(direction, float(log2_norm))

    @property
    def is_empty(self) -> bool:
        return self.log2_norm == -math.inf

    def published(self) -> bytes | None:
        """float32 little-endian bytes of the unit direction; None while empty."""
        return None if self.is_empty else encode_vector(self.direction)


@dataclass(frozen=True, slots=True, eq=False)  # arrays: compare fields, not states
class InterestState:
    """A user's long- and short-term interest, both kept at `ref_ms` (event time)."""

    ref_ms: int
    long: Interest
    short: Interest

    @classmethod
    def empty(cls, dim: int, ref_ms: int = 0) -> InterestState:
        return cls(ref_ms, Interest.empty(dim), Interest.empty(dim))


class Contributions(NamedTuple):
    """A batch's contributing events as rows: row i is `weight[i] * vectors[i]` at `ts[i]`
    for the user at index `user[i]` of the states passed alongside."""

    user: npt.NDArray[np.intp]
    ts: npt.NDArray[np.int64]
    weight: npt.NDArray[np.float64]
    vectors: npt.NDArray[np.float32]


def contributions(
    events: Sequence[Event],
    vectors: npt.NDArray[np.float32],
    users: Sequence[int],
    params: VectorParams,
) -> Contributions:
    """Rows for `advance_batch`: event i has vector row i and belongs to user `users[i]`.

    Events whose type weighs nothing are dropped here.
    """
    weight = np.fromiter((event_weight(e, params) for e in events), np.float64, len(events))
    keep = np.flatnonzero(weight != 0.0)
    ts = np.fromiter((e.ts for e in events), np.int64, len(events))
    return Contributions(
        np.asarray(users, dtype=np.intp)[keep], ts[keep], weight[keep], vectors[keep]
    )


def advance(
    state: InterestState,
    rows: Contributions,
    params: VectorParams,
    new_ref_ms: int | None = None,
) -> InterestState:
    """One user's fold (every row's `user` must be 0); see `advance_batch`."""
    refs = None if new_ref_ms is None else [new_ref_ms]
    return advance_batch([state], rows, params, refs)[0]


def advance_batch(
    states: Sequence[InterestState],
    rows: Contributions,
    params: VectorParams,
    new_ref_ms: Sequence[int] | None = None,
) -> list[InterestState]:
    """Fold the rows into each user's state; pure, vectorised over the whole batch.

    Each user's new reference is `max(ref_ms, its rows' ts)`, or the caller's
    `new_ref_ms[u]` when given (e.g. the profile's `last_seen`, which also moves
    on events without text; it must not be below that maximum). Users without
    rows keep their direction exactly; only their norm decays to the new reference.
    """
    refs = np.fromiter((s.ref_ms for s in states), np.int64, len(states))
    top = refs.copy()
    np.maximum.at(top, rows.user, rows.ts)
    if new_ref_ms is not None:
        wanted = np.asarray(new_ref_ms, dtype=np.int64)
        if np.any(wanted < top):
            raise ValueError("new_ref_ms must be at least each user's ref_ms and latest row ts")
        top = wanted
    order = np.argsort(rows.user, kind="stable")
    sorted_rows = Contributions(
        rows.user[order], rows.ts[order], rows.weight[order], rows.vectors[order]
    )
    longs = _fold([s.long for s in states], refs, top, sorted_rows, params.long_half_life_ms)
    shorts = _fold([s.short for s in states], refs, top, sorted_rows, params.short_half_life_ms)
    return [
        InterestState(int(ref), long, short)
        for ref, long, short in zip(top, longs, shorts, strict=True)
    ]


def _fold(
    olds: list[Interest],
    refs: npt.NDArray[np.int64],
    new_refs: npt.NDArray[np.int64],
    rows: Contributions,
    half_life_ms: float,
) -> list[Interest]:
    """One horizon for all users, rows sorted by user, in the log2 domain (see the module doc)."""
    if not olds:
        return []
    old_exp = np.array([i.log2_norm for i in olds], dtype=np.float64)
    old_exp -= (new_refs - refs) / half_life_ms  # -inf stays -inf
    with np.errstate(divide="ignore"):  # |w| = 0 gives -inf: the row adds nothing
        row_exp = np.log2(np.abs(rows.weight)) - (new_refs[rows.user] - rows.ts) / half_life_ms
    top_exp = old_exp.copy()
    np.maximum.at(top_exp, rows.user, row_exp)
    shift = np.where(np.isfinite(top_exp), top_exp, 0.0)  # no -inf - -inf
    old_dirs = np.stack([i.direction for i in olds])
    users, starts = np.unique(rows.user, return_index=True)
    # Every factor is in [0, 1]; one that underflows to 0 was below 2**-1074 of the largest.
    with np.errstate(under="ignore"):
        sums = np.exp2(old_exp - shift)[:, None] * old_dirs  # exp2(-inf) = 0: empty sums
        if len(users):
            coef = np.sign(rows.weight) * np.exp2(row_exp - shift[rows.user])
            sums[users] += _segment_sums(coef, rows.vectors, starts)
    norms = np.linalg.norm(sums, axis=1)
    alive = (norms > _CANCELLED) & np.isfinite(top_exp)
    with np.errstate(divide="ignore", invalid="ignore"):
        directions = _frozen((sums / norms[:, None]).astype(np.float32))
        exps = shift + np.log2(norms)
    touched = np.zeros(len(olds), dtype=bool)
    touched[users] = True
    result: list[Interest] = []
    for u, old in enumerate(olds):
        if not touched[u]:  # same direction exactly; the norm decays to the new reference
            result.append(Interest(old.direction, float(old_exp[u])))
        elif alive[u]:
            result.append(Interest(directions[u], float(exps[u])))
        else:
            result.append(Interest.empty(old_dirs.shape[1]))
    return result


def _segment_sums(
    coef: npt.NDArray[np.float64], vectors: npt.NDArray[np.float32], starts: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """Sum of coef[i] * vectors[i] over each run of rows that starts at `starts[k]`.

    One matrix-vector product per user with several rows, one vectorised
    product for all users with a single row: about 8x faster than
    `np.add.reduceat` along axis 0, which walks the 384 columns with a stride.
    """
    ends = np.append(starts[1:], len(coef))
    out = np.empty((len(starts), vectors.shape[1]), dtype=np.float64)
    single = ends - starts == 1
    out[single] = coef[starts[single], None] * vectors[starts[single]]
    for k in np.flatnonzero(~single):
        out[k] = coef[starts[k] : ends[k]] @ vectors[starts[k] : ends[k]]
    return out


def encode_vector(vector: npt.NDArray[np.floating]) -> bytes:
    """The wire form of a vector: float32 little-endian bytes."""
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vector(data: bytes) -> Vector:
    """A read-only float32 vector from its wire form."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes is not a whole number of float32 values")
    return _frozen(np.frombuffer(data, dtype="<f4").astype(np.float32))


def cosine_drift(
    previous: bytes | npt.NDArray[np.generic] | None,
    current: bytes | npt.NDArray[np.generic] | None,
) -> float:
    """1 - cosine between the last published vector and the current one, in [0, 2].

    Either side may be float32 wire bytes or an array of any numeric dtype (a
    `decode_sketch` result included). A vector appearing or disappearing counts
    as full drift (1.0); nothing to nothing is none. Publish when this passes
    the configured threshold.
    """
    if previous is None or current is None:
        return 0.0 if previous is None and current is None else 1.0
    a = decode_vector(previous) if isinstance(previous, bytes) else previous
    b = decode_vector(current) if isinstance(current, bytes) else current
    if a.shape != b.shape:
        return 1.0  # another encoder's space: nothing in common
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    if norms == 0.0:
        return 1.0
    cosine = float(np.dot(a64, b64)) / norms
    return 1.0 - max(-1.0, min(1.0, cosine))


def drift_sketch(vector: npt.NDArray[np.floating]) -> bytes:
    """What to keep of a published vector to measure drift against later: int8 codes.

    A quarter of the float32 size (384 bytes for MiniLM), so the profile need
    not hold a third full vector. Cosine is scale-free, so no scale is stored;
    rounding moves the cosine by about 1e-5, far below any drift threshold.
    """
    peak = float(np.max(np.abs(vector))) if len(vector) else 0.0
    if peak == 0.0:
        return bytes(len(vector))
    return np.round(np.asarray(vector, dtype=np.float64) * (127.0 / peak)).astype(np.int8).tobytes()


def decode_sketch(data: bytes) -> npt.NDArray[np.int8]:
    """The int8 codes of a `drift_sketch`, for `cosine_drift`."""
    return np.frombuffer(data, dtype=np.int8)


def _frozen(vector: Vector) -> Vector:
    vector.flags.writeable = False
    return vector


@dataclass(frozen=True, slots=True, eq=False)
class StoredInterest:
    """The vector part of a stored profile: published bytes, norms and the drift sketch."""

    vec_long: bytes | None = None
    vec_short: bytes | None = None
    log2_long: float | None = None
    log2_short: float | None = None
    sketch: bytes | None = None  # int8 sketch of the last published vec_long

    def state(self, ref_ms: int, dim: int) -> InterestState:
        return InterestState(
            ref_ms,
            Interest.from_stored(self.vec_long, self.log2_long, dim),
            Interest.from_stored(self.vec_short, self.log2_short, dim),
        )

    @classmethod
    def of(cls, state: InterestState, sketch: bytes | None) -> StoredInterest:
        return cls(
            state.long.published(),
            state.short.published(),
            _finite(state.long.log2_norm),
            _finite(state.short.log2_norm),
            sketch,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "log2_long": self.log2_long,
            "log2_short": self.log2_short,
            "sketch": base64.b64encode(self.sketch).decode() if self.sketch else None,
        }

    @classmethod
    def from_json(
        cls, data: dict[str, object], vec_long: bytes | None, vec_short: bytes | None
    ) -> StoredInterest:
        sketch = data.get("sketch")
        return cls(
            vec_long,
            vec_short,
            _float(data.get("log2_long")),
            _float(data.get("log2_short")),
            base64.b64decode(sketch) if isinstance(sketch, str) else None,
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
