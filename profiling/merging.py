"""One profile folded into another: what a `merge` command (`profile-commands`) writes.

A shop merges an anonymous visitor's profile into the account they log in to.
The merged profile is what the known user would hold had every event of both
been theirs: counts, spend and orders add up; first and last seen widen; the
decayed sums (category affinity, interest vectors) are both decayed to the new
last seen and added (they are linear in the events, `profiling.profile` and
`profiling.vectors`); the behaviour state behind the risk features keeps the
newest stamps and tokens of both (`merge_behaviour`). What only the known
user's own history can say stays theirs: partition watermarks and the segment
(when they have one). The risk is the latest, of whichever user's scored event
is newer (`_rated`). The merge is published as a change of every public field
(but the segment, when the account keeps the one its last message carried:
`prev_segment` is then that one too), with the visitor's alerts that may not
have gone out yet (the merged write's `Profile.alerts`).

The dedupe window takes both users' event ids: a visitor's event older than
the merge that arrives after it is forwarded to the known user, or to whoever
holds its profile since (`profiling.forwarding`), and one already in the
merged profile (a replay) is then found there. `merge_marker` makes the merge
idempotent: its digest joins the window too, last, and the profile's last
merges (`Profile.merges`), where a replayed command finds it however many
events the account had since (`merged_already`).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from profiling.behaviour import merge_behaviour
from profiling.profile import (
    DIGEST_BYTES,
    SCORE_THEN_NAME,
    Profile,
    ProfileParams,
    event_digest,
    evolve,
    in_window,
)
from profiling.store import public_fields, vector_fields
from profiling.vectors import (
    Interest,
    StoredInterest,
    VectorParams,
    decode_vector,
    drift_sketch,
    merge_interests,
)

MERGES_KEPT: Final = 8  # merges a profile remembers apart from its dedupe window


def merge_marker(from_user_id: str, at_ms: int) -> bytes:
    """The dedupe-window entry that says `from_user_id`'s profile, taken at `at_ms`, is in."""
    return event_digest(f"merge\x1f{from_user_id}\x1f{at_ms}")


def merged_already(known: Profile, marker: bytes) -> bool:
    """Whether `known` holds the merge of `marker` (a replayed command after a crash).

    The dedupe window alone would forget it after as many of the account's own
    events as it holds: the merge's profile aside, not yet dropped, would then be
    merged a second time. The last `MERGES_KEPT` merges are kept apart; a replay
    comes before the account's next merges, which wait behind it on its partition
    of the commands topic. The window is still looked at for profiles merged by
    earlier versions.
    """
    return in_window(known.merges, marker) or in_window(known.seen, marker)


def merged_window(mine: bytes, theirs: bytes, marker: bytes, size: int) -> bytes:
    """The merged dedupe window: both users' latest event ids, then the merge's marker.

    Where they do not all fit in `size` entries, each side keeps its latest
    ones and neither fewer than half of the room (or all it has), so a
    visitor with a full window cannot push the account's own recent ids out,
    nor the account the visitor's (re-sent or forwarded events meet them next).
    """
    room = size - 1  # the marker takes one entry
    have_mine, have_theirs = len(mine) // DIGEST_BYTES, len(theirs) // DIGEST_BYTES
    keep_theirs = min(have_theirs, max(room - have_mine, room // 2))
    keep_mine = min(have_mine, room - keep_theirs)
    return (
        mine[len(mine) - DIGEST_BYTES * keep_mine :]
        + theirs[len(theirs) - DIGEST_BYTES * keep_theirs :]
        + marker
    )[-DIGEST_BYTES * size :]


def merge_profiles(
    known: Profile,
    taken: Profile,
    marker: bytes,
    *,
    params: ProfileParams,
    vectors: VectorParams,
    now_ms: int,
    models: Sequence[str] = (),
) -> Profile:
    """`known` with `taken` folded in: the next version, published whole.

    `models`: the ids of the encoder's one space (`InterestModel.model_ids`, its
    current id first): vectors under any two of them are summed, under the first.
    """
    last_seen = max(known.last_seen, taken.last_seen)
    firsts = [p.first_seen for p in (known, taken) if not p.is_new]
    counts = dict(known.counts)
    for kind, count in taken.counts.items():
        counts[kind] = counts.get(kind, 0) + count
    half_life = params.category_half_life_ms
    scores: dict[str, float] = {}
    for source in (known, taken):
        shift = 2.0 ** (-(last_seen - source.last_seen) / half_life)
        for name, score in source.category_scores.items():
            scores[name] = scores.get(name, 0.0) + score * shift
    if len(scores) > params.category_slots:
        scores = dict(heapq.nlargest(params.category_slots, scores.items(), key=SCORE_THEN_NAME))
    behaviour = (
        merge_behaviour(known.behaviour, taken.behaviour)
        if known.behaviour is not None and taken.behaviour is not None
        else known.behaviour or taken.behaviour
    )
    interest, model = _interest(known, taken, last_seen, vectors, models)
    interest = _sketched(interest)
    source = known if known.segment is not None else taken  # whose segment and dwell
    # The account's last message carried its segment (a move is published at once); a
    # segment taken from the visitor is a move from there, as the models' would be.
    moved = known.is_new or source.segment != known.segment
    rated = _rated(known, taken)
    version = known.version + 1
    merged = evolve(
        known,
        version=version,
        first_seen=min(firsts, default=0),
        last_seen=last_seen,
        updated=now_ms,
        events=known.events + taken.events,
        counts=counts,
        spend=round(known.spend + taken.spend, 6),
        orders=known.orders + taken.orders,
        category_scores=scores,
        seen=merged_window(known.seen, taken.seen, marker, params.dedupe_window),
        interest=interest,
        model=model,
        behaviour=behaviour,
        segment=source.segment,
        prev_segment=known.segment if moved else known.prev_segment,
        segment_dwell=source.segment_dwell,
        risk=rated.risk,
        risk_reasons=rated.risk_reasons,
        # The merge raises no alert, forwards and dead-letters nothing of its own. It sends
        # again the alerts of the visitor's last two writes, whose acks may still be
        # pending: a replay of the batch that raised them finds no profile of the
        # visitor, and the events it forwards are duplicates at the account, where
        # nothing resends them. The account's last write's alerts and both users'
        # forwards and dead letters are kept as a write's are, for the replay of a
        # batch whose acks were lost (a crash with that batch still publishing as the
        # merge landed).
        alerts=taken.alerts_before + taken.alerts,
        forwards=(),
        alerts_before=known.alerts,
        forwards_before=known.forwards + taken.forwards,
        dead_letters=(),
        dead_letters_before=known.dead_letters + taken.dead_letters,
        merges=(known.merges + marker)[-DIGEST_BYTES * MERGES_KEPT :],
        published_at=now_ms,
        published_version=version,
    )
    changed = merged_fields(merged)
    return evolve(merged, unpublished=changed if moved else changed - {"segment"})


def merged_fields(profile: Profile) -> frozenset[str]:
    """Every public field of `profile`, vectors included: what a merge's message reports
    (but the segment, when the account keeps the one its last message carried)."""
    return frozenset(public_fields(profile)) | frozenset(vector_fields(profile))


def _rated(known: Profile, taken: Profile) -> Profile:
    """Whose risk and reasons the merged profile keeps: those of the newer scored event,
    as the events applied as one user's would leave them (`profiling.models`).

    A state that knows no scored event (0: only logins whose outcome was not told,
    written before `last_scored`) cannot say which is newer: then, as on a tie,
    the known user's when they have one.
    """
    if known.risk is None or taken.risk is None:
        return known if known.risk is not None else taken
    mine = known.behaviour.last_scored if known.behaviour is not None else 0
    theirs = taken.behaviour.last_scored if taken.behaviour is not None else 0
    return taken if mine and theirs > mine else known


def _interest(
    known: Profile, taken: Profile, last_seen: int, params: VectorParams, models: Sequence[str]
) -> tuple[StoredInterest | None, str | None]:
    """The merged vectors and the encoder that made them.

    Where only one user has vectors (an account with nothing but logins), theirs
    are the sum. Vectors of different encoders are not comparable: the known
    user's are kept. Ids of one encoder (a current and a former, `models`) are one
    space: those are summed.
    """
    mine, theirs = known.interest, taken.interest
    dim = None if mine is None else _dim(mine)
    dim_theirs = None if theirs is None else _dim(theirs)
    if mine is None or theirs is None or dim is None or dim_theirs is None:
        source = taken if dim_theirs is not None or mine is None else known
        return _timed(source), source.model
    model = known.model
    if model != taken.model:
        if not {model, taken.model} <= set(models):
            return _timed(known), model
        model = models[0]
    if dim != dim_theirs:
        return _timed(known), known.model
    ref_mine = mine.ref_ms if mine.ref_ms is not None else known.last_seen
    ref_theirs = theirs.ref_ms if theirs.ref_ms is not None else taken.last_seen
    ref = max(last_seen, ref_mine, ref_theirs)
    long = merge_interests(
        (Interest.from_stored(mine.vec_long, mine.log2_long, dim), ref_mine),
        (Interest.from_stored(theirs.vec_long, theirs.log2_long, dim), ref_theirs),
        ref,
        params.long_half_life_ms,
    )
    short = merge_interests(
        (Interest.from_stored(mine.vec_short, mine.log2_short, dim), ref_mine),
        (Interest.from_stored(theirs.vec_short, theirs.log2_short, dim), ref_theirs),
        ref,
        params.short_half_life_ms,
    )
    stored = StoredInterest(
        long.published(),
        short.published(),
        None if long.is_empty else long.log2_norm,
        None if short.is_empty else short.log2_norm,
        mine.sketch,
        ref,
    )
    return stored, model


def _timed(source: Profile) -> StoredInterest | None:
    """`source`'s vectors alone, with the time they are decayed to: stored without it,
    that was `source`'s last_seen, which the merged profile's may pass."""
    kept = source.interest
    if kept is not None and kept.ref_ms is None:
        kept = replace(kept, ref_ms=source.last_seen)
    return kept


def _sketched(interest: StoredInterest | None) -> StoredInterest | None:
    """`interest` with the drift sketch of its `vec_long`: the merge publishes that vector,
    so later drift is measured from it, not from either user's last publication."""
    if interest is None:
        return None
    vec_long = interest.vec_long
    sketch = None if vec_long is None else drift_sketch(decode_vector(vec_long))
    return interest if sketch == interest.sketch else replace(interest, sketch=sketch)


def _dim(interest: StoredInterest) -> int | None:
    """The vectors' dimension (float32 values), None when there are none."""
    vector = interest.vec_long or interest.vec_short
    return len(vector) // 4 if vector else None
