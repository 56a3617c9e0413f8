"""Interest vectors in the batch pipeline: embed a batch's applied events, fold them in.

`InterestModel.update` runs between folding a batch's aggregates
(`profiling.profile.apply_deliveries`) and writing the profiles: it embeds the
text of every applied event in one call (cached, encoder off the event loop),
folds each user's rows into their long and short vectors in one vectorised
step (`profiling.vectors.advance_horizons`), from the event time the stored
vectors are decayed to, and publishes a user whose long-term vector turned
further than `drift_threshold` (1 - cosine) from the last published one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from profiling import slots
from profiling.embedding_cache import EmbeddingCache, EmbeddingLRU, embed_events
from profiling.encoder import Encoder
from profiling.profile import Outcome, Profile, make_outcome
from profiling.vectors import (
    Horizon,
    StoredInterest,
    VectorParams,
    advance_horizons,
    contributions,
    cosine_drifts,
    decode_sketch,
    drift_sketches,
)

_NOTHING_STORED = StoredInterest()
# Which vector fields a write changed, by (vec_long changed, vec_short changed).
_MOVED: Final = {
    (long, short): frozenset(
        name for name, moved in (("vec_long", long), ("vec_short", short)) if moved
    )
    for long in (False, True)
    for short in (False, True)
}
_MODEL: Final = frozenset({"model"})
_stored_interest: Final = slots.builder(StoredInterest)
_with_vectors: Final = slots.replacer_of(
    Profile, ("interest", "model", "unpublished", "published_at", "published_version")
)


@dataclass
class InterestModel:
    """Everything the vector step needs: the encoder, its caches and the vector semantics."""

    encoder: Encoder
    lru: EmbeddingLRU
    shared: EmbeddingCache | None = None
    params: VectorParams = field(default_factory=VectorParams)
    drift_threshold: float = 0.05
    cache_ttl_s: int = 7 * 86_400

    @property
    def model_ids(self) -> tuple[str, ...]:
        """The ids the encoder's vectors are stored under: its `model_id`, then former ones."""
        return (self.encoder.model_id, *getattr(self.encoder, "former_ids", ()))

    async def update(self, outcomes: Sequence[Outcome], now_ms: int) -> list[Outcome]:
        """The same outcomes with vectors folded in, and publication where vectors drifted.

        Every step works on the whole batch as matrices (stored bytes in, one fold,
        one drift check, bytes out); per user there is only the profile copy.
        """
        written = [o for o in outcomes if o.wrote]
        if not written:
            return list(outcomes)
        events = [event for o in written for event in o.applied]
        owner = np.repeat(np.arange(len(written)), [len(o.applied) for o in written])
        embedded = await embed_events(
            events, self.encoder, self.lru, self.shared, ttl_s=self.cache_ttl_s
        )
        rows = contributions(
            [events[i] for i in embedded.rows.tolist()],
            embedded.table,
            owner[embedded.rows],
            self.params,
            slot=embedded.slots,
        )
        # Vectors another encoder wrote are in another space (most encoders give 384
        # dimensions): folding them with this one's would mix the two. Start again.
        same = (*self.model_ids, None)
        stored = [
            o.profile.interest if o.profile.interest and o.profile.model in same
            else _NOTHING_STORED
            for o in written
        ]  # fmt: skip
        dim = self.encoder.dim
        long = Horizon.from_stored([s.vec_long for s in stored], [s.log2_long for s in stored], dim)
        short = Horizon.from_stored(
            [s.vec_short for s in stored], [s.log2_short for s in stored], dim
        )
        # The stored vectors are decayed to the time they were written at; data written
        # before that time was stored is taken as decayed to last_seen (a batch late).
        refs = np.array(
            [s.ref_ms if s.ref_ms is not None else o.profile.last_seen
             for s, o in zip(stored, written, strict=True)],
            dtype=np.int64,
        )  # fmt: skip
        last_seen = np.array([o.profile.last_seen for o in written], dtype=np.int64)
        _, long, short = advance_horizons(
            refs, long, short, rows, self.params, new_ref_ms=last_seen
        )
        folded = self._publish(written, stored, long, short, now_ms)
        updated = {id(o): new for o, new in zip(written, folded, strict=True)}
        return [updated.get(id(o), o) for o in outcomes]

    def _publish(
        self,
        written: list[Outcome],
        previous: list[StoredInterest],
        long: Horizon,
        short: Horizon,
        now_ms: int,
    ) -> list[Outcome]:
        """Each outcome with its new vectors stored, published if they drifted (one copy each)."""
        vec_long, vec_short = long.published(), short.published()
        log2_long, log2_short = long.finite_log2_norms(), short.finite_log2_norms()
        drift = self._drifts(previous, long, vec_long)
        # What the profiles hold: `previous` unless it was another encoder's (dropped).
        held = [o.profile.interest or _NOTHING_STORED for o in written]
        # Drifted: a long vector now, and none published before or one it turned away from;
        # or none now, where there was one (another encoder's).
        publish = [
            o.publish
            or (vec is not None and (before.sketch is None or d > self.drift_threshold))
            or (vec is None and had.vec_long is not None)
            for o, before, had, vec, d in zip(written, previous, held, vec_long, drift, strict=True)
        ]
        sketched = [u for u, vec in enumerate(vec_long) if publish[u] and vec is not None]
        codes = drift_sketches(long.directions[sketched])
        # Published without a long vector: no sketch, so one that reappears is drift again.
        sketches = [
            None if sent else before.sketch for sent, before in zip(publish, previous, strict=True)
        ]
        for u, row in zip(sketched, codes, strict=True):
            sketches[u] = row.tobytes()
        model = self.encoder.model_id
        result = []
        for u, (o, before) in enumerate(zip(written, held, strict=True)):
            moved = _MOVED[before.vec_long != vec_long[u], before.vec_short != vec_short[u]]
            if o.profile.model != model:
                moved |= _MODEL
            stored = _stored_interest(
                vec_long[u], vec_short[u], log2_long[u], log2_short[u], sketches[u],
                o.profile.last_seen,
            )  # fmt: skip
            profile = o.profile
            profile = _with_vectors(
                profile,
                interest=stored,
                model=model,
                unpublished=_with_names(profile.unpublished, moved),
                published_at=now_ms if publish[u] else profile.published_at,
                published_version=profile.version if publish[u] else profile.published_version,
            )
            outcome = make_outcome((
                profile, o.applied, o.duplicates, o.replayed, _with_names(o.changed, moved),
                publish[u], o.scored, o.suppressed, o.forwarded, o.stranded,
            ))  # fmt: skip
            result.append(outcome)
        return result

    def _drifts(
        self, previous: list[StoredInterest], long: Horizon, vec_long: list[bytes | None]
    ) -> list[float]:
        """`cosine_drift(sketch, new long direction)` per user (1.0 where they cannot compare).

        Only users with a new long vector and a sketch are measured, in one pass.
        """
        dim = long.directions.shape[1]
        drift = [1.0] * len(previous)
        measured = [
            u
            for u, (before, vec) in enumerate(zip(previous, vec_long, strict=True))
            if vec is not None and before.sketch is not None and len(before.sketch) == dim
        ]
        if measured:
            joined = b"".join(previous[u].sketch or b"" for u in measured)  # one decode
            codes = decode_sketch(joined).reshape(len(measured), dim)
            now = long.directions[measured]
            for u, d in zip(measured, cosine_drifts(codes, now).tolist(), strict=True):
                drift[u] = d
        return drift


def _with_names(names: frozenset[str], more: frozenset[str]) -> frozenset[str]:
    """`names | more`, as `names` itself when it holds them already (no copy of the set)."""
    return names if more <= names else names | more
