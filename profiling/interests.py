"""Interest vectors in the batch pipeline: embed a batch's applied events, fold them in.

`InterestModel.update` runs between folding a batch's aggregates
(`profiling.profile.apply_deliveries`) and writing the profiles: it embeds the
text of every applied event in one call (cached, encoder off the event loop),
folds each user's rows into their long and short vectors in one vectorised
step (`profiling.vectors.advance_batch`), and publishes a user whose long-term
vector turned further than `drift_threshold` (1 - cosine) from the last
published one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from profiling.embedding_cache import EmbeddingCache, EmbeddingLRU, embed_events
from profiling.encoder import Encoder
from profiling.profile import Outcome, Profile, evolve
from profiling.vectors import (
    InterestState,
    StoredInterest,
    VectorParams,
    advance_batch,
    contributions,
    cosine_drift,
    decode_sketch,
    drift_sketch,
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

    async def update(self, outcomes: Sequence[Outcome], now_ms: int) -> list[Outcome]:
        """The same outcomes with vectors folded in, and publication where vectors drifted."""
        written = [o for o in outcomes if o.wrote]
        if not written:
            return list(outcomes)
        events = [event for o in written for event in o.applied]
        owner = np.repeat(np.arange(len(written)), [len(o.applied) for o in written])
        embedded = await embed_events(
            events, self.encoder, self.lru, self.shared, ttl_s=self.cache_ttl_s
        )
        rows = contributions(
            [events[i] for i in embedded.rows], embedded.vectors, owner[embedded.rows], self.params
        )
        before = [self._state(o.profile) for o in written]
        after = advance_batch(before, rows, self.params, [o.profile.last_seen for o in written])
        updated = {id(o): self._fold(o, new, now_ms) for o, new in zip(written, after, strict=True)}
        return [updated.get(id(o), o) for o in outcomes]

    def _state(self, profile: Profile) -> InterestState:
        stored = profile.interest or StoredInterest()
        return stored.state(profile.last_seen, self.encoder.dim)

    def _fold(self, outcome: Outcome, new: InterestState, now_ms: int) -> Outcome:
        """The outcome with `new` vectors stored, published if they drifted (one copy each)."""
        profile = outcome.profile
        previous = profile.interest or StoredInterest()
        stored = StoredInterest.of(new, previous.sketch)
        moved = {
            name
            for name, before, now in (
                ("vec_long", previous.vec_long, stored.vec_long),
                ("vec_short", previous.vec_short, stored.vec_short),
            )
            if before != now
        }
        drifted = stored.vec_long is not None and (
            previous.sketch is None
            or cosine_drift(decode_sketch(previous.sketch), new.long.direction)
            > self.drift_threshold
        )
        publish = outcome.publish or drifted
        if publish and stored.vec_long is not None:
            stored = replace(stored, sketch=drift_sketch(new.long.direction))
        profile = evolve(
            profile,
            interest=stored,
            model=self.encoder.model_id,
            unpublished=profile.unpublished | moved,
            published_at=now_ms if publish else profile.published_at,
            published_version=profile.version if publish else profile.published_version,
        )
        o = outcome
        return Outcome(
            profile, o.applied, o.duplicates, o.replayed, o.changed | moved, publish, o.scored
        )
