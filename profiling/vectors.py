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
returns each user's new state. Underneath, `advance_horizons` works on one
`Horizon` matrix per horizon (a row per user), which the pipeline builds from
the stored bytes and turns back into bytes without an object per user.

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
# itself out: its direction would be rounding noise, so it becomes empty. Stored
# directions are float32, about 1e-7 from the encoder's rows: a sum of terms that
# cancel across batches leaves that much, so the bound sits well above it.
_CANCELLED: Final = 1e-5

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
    after the item title when there is one. Logins and empty fields: nothing; a
    field of only white space is empty too.
    """
    kind = event.type
    if kind in ITEM_TYPES:
        return _said(event.title) or item_fallback_text(event)
    if kind == "search":
        return _said(event.query)
    if kind == "review":
        parts = [part for part in (_said(event.title), _said(event.text)) if part]
        return ". ".join(parts) if parts else item_fallback_text(event)
    return None


def _said(text: str | None) -> str | None:
    """`text`, unless it is empty or only white space (which would still encode)."""
    return text if text and not text.isspace() else None


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
        if len(data) != 4 * dim:
            return cls.empty(dim)
        direction = decode_vector(data)
        if not np.all(np.isfinite(direction)):
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
    """A batch's contributing events as rows: row i adds `weight[i]` times its vector at
    `ts[i]` to the user at index `user[i]` of the states passed alongside.

    Row i's vector is `vectors[i]`, or, with `slot`, `vectors[slot[i]]`: `vectors` is
    then a table of the batch's distinct vectors (a title viewed by many users is one
    table row), and no per-row copy of the vectors is ever made.
    """

    user: npt.NDArray[np.intp]
    ts: npt.NDArray[np.int64]
    weight: npt.NDArray[np.float64]
    vectors: npt.NDArray[np.float32]
    slot: npt.NDArray[np.intp] | None = None

    def take(self, index: npt.NDArray[np.intp]) -> Contributions:
        """The rows at `index`, in that order (a table of vectors stays whole)."""
        if self.slot is None:
            return Contributions(
                self.user[index], self.ts[index], self.weight[index], self.vectors[index]
            )
        return Contributions(
            self.user[index], self.ts[index], self.weight[index], self.vectors, self.slot[index]
        )


def contributions(
    events: Sequence[Event],
    vectors: npt.NDArray[np.float32],
    users: Sequence[int] | npt.NDArray[np.intp],
    params: VectorParams,
    slot: Sequence[int] | npt.NDArray[np.intp] | None = None,
) -> Contributions:
    """Rows for `advance_batch`: event i belongs to user `users[i]` and has vector row i
    (row `slot[i]` of the table `vectors`, when `slot` is given).

    Events whose type weighs nothing are dropped here.
    """
    weights = params.weights  # `event_weight`, inlined: this runs once per event
    weight = np.array([weights.get(e.type, 0.0) for e in events], dtype=np.float64)
    ts = np.array([e.ts for e in events], dtype=np.int64)
    user = np.asarray(users, dtype=np.intp)
    rows = Contributions(
        user, ts, weight, vectors, None if slot is None else np.asarray(slot, dtype=np.intp)
    )
    if np.all(weight != 0.0):  # the usual case: nothing to drop
        return rows
    return rows.take(np.flatnonzero(weight != 0.0))


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
    dim = states[0].long.direction.shape[0] if states else rows.vectors.shape[1]
    refs = np.fromiter((s.ref_ms for s in states), np.int64, len(states))
    top, long, short = advance_horizons(
        refs,
        Horizon.of([s.long for s in states], dim),
        Horizon.of([s.short for s in states], dim),
        rows,
        params,
        new_ref_ms=new_ref_ms,
    )
    return [
        InterestState(ref, long_u, short_u)
        for ref, long_u, short_u in zip(
            top.tolist(), long.interests(), short.interests(), strict=True
        )
    ]


class Horizon(NamedTuple):
    """One horizon (long or short) of every user in a batch, as matrices: what the fold works on.

    Row u is user u's unit direction (float32; zero while empty) and log2 of its
    norm at the reference (-inf while empty). The pipeline goes from stored bytes
    to these matrices and back without building an `Interest` per user.
    """

    directions: Vector  # (users, dim), read-only
    log2_norms: npt.NDArray[np.float64]  # (users,)

    @classmethod
    def of(cls, interests: Sequence[Interest], dim: int) -> Horizon:
        directions = np.zeros((len(interests), dim), dtype=np.float32)
        if interests:
            directions[:] = [i.direction for i in interests]
        log2_norms = np.array([i.log2_norm for i in interests], dtype=np.float64)
        return cls(_frozen(directions), log2_norms)

    @classmethod
    def from_stored(
        cls, data: Sequence[bytes | None], log2_norms: Sequence[float | None], dim: int
    ) -> Horizon:
        """`Interest.from_stored` for every user at once: one decode of all the vector bytes.

        A user without a usable vector joins zero bytes in its place, so the decoded
        block is the matrix, in user order (read-only, as it views the joined bytes):
        nothing is scattered, nor is a matrix cleared first.
        """
        size = 4 * dim
        blank = bytes(size)  # an empty user's row: zeros
        vectors: list[bytes] = []
        exps: list[float] = []
        for vector, log2 in zip(data, log2_norms, strict=True):
            if (
                vector is not None
                and len(vector) == size
                and log2 is not None
                and math.isfinite(log2)
            ):
                vectors.append(vector)
                exps.append(log2)
            else:
                vectors.append(blank)
                exps.append(-math.inf)
        directions = np.frombuffer(b"".join(vectors), dtype="<f4").reshape(len(data), dim)
        log2s = np.array(exps, dtype=np.float64)
        ok = np.isfinite(directions).all(axis=1)  # a row with NaN or inf: empty, as one at a time
        if not ok.all():
            directions = directions.copy()
            directions[~ok] = 0.0
            log2s[~ok] = -math.inf
            directions = _frozen(directions)
        return cls(directions, log2s)

    def interests(self) -> list[Interest]:
        return [
            Interest(direction, log2)
            for direction, log2 in zip(self.directions, self.log2_norms.tolist(), strict=True)
        ]

    def published(self) -> list[bytes | None]:
        """Each user's `Interest.published()`: float32 little-endian bytes, None while empty."""
        # Row by row: a `tobytes` of the whole matrix, then a slice of it per user, copied
        # every vector twice.
        rows = np.asarray(self.directions, dtype="<f4")  # `encode_vector`'s wire form
        return [
            row.tobytes() if log2 != -math.inf else None
            for row, log2 in zip(rows, self.log2_norms.tolist(), strict=True)
        ]

    def finite_log2_norms(self) -> list[float | None]:
        """What `StoredInterest` keeps of each norm: None while empty."""
        return [_finite(log2) for log2 in self.log2_norms.tolist()]


def advance_horizons(
    refs: npt.NDArray[np.int64],
    long: Horizon,
    short: Horizon,
    rows: Contributions,
    params: VectorParams,
    *,
    new_ref_ms: Sequence[int] | npt.NDArray[np.int64] | None = None,
) -> tuple[npt.NDArray[np.int64], Horizon, Horizon]:
    """`advance_batch` on matrices: each user's new reference, long and short horizon."""
    top = refs.copy()
    np.maximum.at(top, rows.user, rows.ts)
    if new_ref_ms is not None:
        wanted = np.asarray(new_ref_ms, dtype=np.int64)
        if np.any(wanted < top):
            raise ValueError("new_ref_ms must be at least each user's ref_ms and latest row ts")
        top = wanted
    if np.any(rows.user[1:] < rows.user[:-1]):  # the pipeline's rows come sorted already
        rows = rows.take(np.argsort(rows.user, kind="stable"))
    users, starts = np.unique(rows.user, return_index=True)
    long_decay = _decay(long, refs, top, rows, params.long_half_life_ms)
    short_decay = _decay(short, refs, top, rows, params.short_half_life_ms)
    long_sums, short_sums = _segment_sums([long_decay.coef, short_decay.coef], rows, starts)
    return (
        top,
        _fold(long, long_decay, users, long_sums),
        _fold(short, short_decay, users, short_sums),
    )


class _Decay(NamedTuple):
    """One horizon moved to the new references, in the log2 domain (see the module doc)."""

    old_exp: npt.NDArray[np.float64]  # log2 of each user's old norm at its new reference
    top_exp: npt.NDArray[np.float64]  # the largest exponent of each user's old sum and rows
    shift: npt.NDArray[np.float64]  # top_exp, 0 where -inf: what every factor is relative to
    coef: npt.NDArray[np.float64]  # each row's signed factor, relative to its user's shift


def _decay(
    old: Horizon,
    refs: npt.NDArray[np.int64],
    new_refs: npt.NDArray[np.int64],
    rows: Contributions,
    half_life_ms: float,
) -> _Decay:
    old_exp = old.log2_norms - (new_refs - refs) / half_life_ms  # -inf stays -inf
    with np.errstate(divide="ignore"):  # |w| = 0 gives -inf: the row adds nothing
        row_exp = np.log2(np.abs(rows.weight)) - (new_refs[rows.user] - rows.ts) / half_life_ms
    top_exp = old_exp.copy()
    np.maximum.at(top_exp, rows.user, row_exp)
    shift = np.where(np.isfinite(top_exp), top_exp, 0.0)  # no -inf - -inf
    # Every factor is in [0, 1]; one that underflows to 0 was below 2**-1074 of the largest.
    with np.errstate(under="ignore"):
        coef = np.sign(rows.weight) * np.exp2(row_exp - shift[rows.user])
    return _Decay(old_exp, top_exp, shift, coef)


def _fold(
    old: Horizon, decay: _Decay, users: npt.NDArray[np.intp], row_sums: npt.NDArray[np.float64]
) -> Horizon:
    """One horizon for all users: `users` (sorted) gain `row_sums`, each its rows' decayed sum.

    Users without rows keep their direction row exactly; only their norm decays.
    """
    old_exp, top_exp, shift, _ = decay
    if not len(users):
        return Horizon(old.directions, old_exp)
    # `users` is sorted and distinct: as long as the batch, it is every user, in order,
    # and the usual case (every written user has rows) needs no gather or scatter.
    every = len(users) == len(old_exp)
    directions_before = old.directions if every else old.directions[users]
    if not every:
        old_exp, top_exp, shift = old_exp[users], top_exp[users], shift[users]
    with np.errstate(under="ignore"):  # exp2(-inf) = 0: empty sums
        sums = np.exp2(old_exp - shift)[:, None] * directions_before + row_sums
    norms = np.linalg.norm(sums, axis=1)
    alive = (norms > _CANCELLED) & np.isfinite(top_exp)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = (sums / norms[:, None]).astype(np.float32)
        exps = shift + np.log2(norms)
    folded = unit if alive.all() else np.where(alive[:, None], unit, np.float32(0.0))
    log2_folded = np.where(alive, exps, -math.inf)
    if every:
        return Horizon(_frozen(folded), log2_folded)
    directions = old.directions.copy()
    directions[users] = folded
    log2_norms = decay.old_exp.copy()
    log2_norms[users] = log2_folded
    return Horizon(_frozen(directions), log2_norms)


def _segment_sums(
    coefs: Sequence[npt.NDArray[np.float64]], rows: Contributions, starts: npt.NDArray[np.intp]
) -> list[npt.NDArray[np.float64]]:
    """For each coef: the sum of coef[i] times row i's vector over each run of rows from
    `starts[k]` (rows sorted by user, a run per user).

    One sparse product for the whole batch: a matrix with a row per (coef, user)
    and a column per vector of `rows.vectors`, holding each row's coefficient,
    times those vectors in float64. With a table of distinct vectors (`rows.slot`)
    no per-row vector is copied; a per-user loop of `np.dot` over a per-row
    float64 copy cost twice as much at 5,000-event batches, and `np.add.reduceat`
    along axis 0 walks the columns with a stride.
    """
    from scipy import sparse  # here: importing it costs 0.1 s, which only folds need

    n, runs = len(rows.user), len(starts)
    column = np.arange(n, dtype=np.intp) if rows.slot is None else rows.slot
    bounds = np.append(starts, n)
    indptr = np.concatenate([bounds[:-1] + j * n for j in range(len(coefs))] + [[len(coefs) * n]])
    weights = sparse.csr_array(
        (np.concatenate(coefs), np.tile(column, len(coefs)), indptr),
        shape=(len(coefs) * runs, len(rows.vectors)),
    )
    sums = weights @ rows.vectors.astype(np.float64)
    return [sums[j * runs : (j + 1) * runs] for j in range(len(coefs))]


def merge_interests(
    first: tuple[Interest, int], second: tuple[Interest, int], ref_ms: int, half_life_ms: float
) -> Interest:
    """The sum of two users' decayed sums, each (sum, the time it is kept at), at `ref_ms`.

    Decaying is linear, so the sum of the two is what one user with both users'
    events would hold. `ref_ms` must be at least both references.
    """
    (a, ref_a), (b, ref_b) = first, second
    if ref_ms < max(ref_a, ref_b):
        raise ValueError("ref_ms must be at least both references")
    exp_a = a.log2_norm - (ref_ms - ref_a) / half_life_ms  # -inf stays -inf
    exp_b = b.log2_norm - (ref_ms - ref_b) / half_life_ms
    top = max(exp_a, exp_b)
    if top == -math.inf:
        return Interest.empty(a.direction.shape[0])
    total = math.exp2(exp_a - top) * a.direction.astype(np.float64) + math.exp2(
        exp_b - top
    ) * b.direction.astype(np.float64)
    norm = float(np.linalg.norm(total))
    if norm <= _CANCELLED:
        return Interest.empty(a.direction.shape[0])
    return Interest(_frozen((total / norm).astype(np.float32)), top + math.log2(norm))


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
    return float(cosine_drifts(a[None], b[None])[0])


def cosine_drifts(
    previous: npt.NDArray[np.generic], current: npt.NDArray[np.generic]
) -> npt.NDArray[np.float64]:
    """`cosine_drift` of each row pair of two (users, dim) matrices, in one pass for a batch.

    A zero row on either side is full drift (1.0).
    """
    a, b = previous.astype(np.float64), current.astype(np.float64)
    norms = np.sqrt(np.sum(a * a, axis=1)) * np.sqrt(np.sum(b * b, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.sum(a * b, axis=1) / norms
    return np.where(norms == 0.0, 1.0, 1.0 - np.clip(cosine, -1.0, 1.0))


def drift_sketch(vector: npt.NDArray[np.floating]) -> bytes:
    """What to keep of a published vector to measure drift against later: int8 codes.

    A quarter of the float32 size (384 bytes for MiniLM), so the profile need
    not hold a third full vector. Cosine is scale-free, so no scale is stored;
    rounding moves the cosine by about 1e-5, far below any drift threshold.
    """
    return drift_sketches(np.asarray(vector)[None]).tobytes()  # one row: its bytes


def drift_sketches(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.int8]:
    """`drift_sketch` of each row of a (users, dim) matrix: each row's codes, peak at 127."""
    peak = np.max(np.abs(vectors), axis=1, initial=0.0).astype(np.float64)
    scale = np.divide(127.0, peak, out=np.zeros_like(peak), where=peak != 0.0)  # zero row: zeros
    codes: npt.NDArray[np.int8] = np.round(vectors * scale[:, None]).astype(np.int8)
    return codes


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
    # Event time the vectors are decayed to (the user's last_seen when they were
    # written). None in data written before it was stored.
    ref_ms: int | None = None

    def to_json(self) -> dict[str, object]:
        """The JSON part, for msgspec's encoder (`profiling.jsonout`): the sketch is left as
        bytes, which msgspec writes as standard padded base64 text, the same text as
        `base64.b64encode`, at a third of its cost (a write per user and batch)."""
        return {
            "log2_long": self.log2_long,
            "log2_short": self.log2_short,
            "sketch": self.sketch or None,
            "ref": self.ref_ms,
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
            _int(data.get("ref")),
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
