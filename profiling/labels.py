"""Delayed fraud labels: join each with the features its event had when scored, and learn.

A `fraud-labels` record says, days after the fact, whether one scored event was
fraud (`schemas/fraud_label.v1.json`). `apply_labels` decodes a batch of them
(bad records become dead letters, like bad events, and so does a record whose key
is not its label's `user_id`: `key_mismatch`, as for events and commands), fetches the features kept
at scoring time in one store round trip, and teaches the risk classifier.
A label whose features are gone (never scored here, or past their TTL) is
counted as `unknown`, not an error; one whose features this version cannot read
(kept by a worker of a version that scored another number of features, during
a rolling upgrade) as `stale_features`: a valid label, with nothing to learn
from, that a replay of a dead letter would not change. A label of a user merged into another since
(`profile-commands`) is joined with the features where that merge sent them,
found as a late event of the user is (`profiling.forwarding`): the merge moved
them, or the event was forwarded and scored there. Records at or below the offsets the
restored model snapshot had learnt are skipped, so a replay after a restart
does not teach the same label twice; and the features keep the label learnt
from them with the record that taught it, so the same label from another
record (a producer's re-send) is a `duplicate`, while another label for the
event (a verdict corrected) is learnt, and so is the same record read again
past the snapshot (a crash before the next one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec

from profiling.events import INVALID_LABEL, KEY_MISMATCH, MIN_TS_MS, Rejection, decode_record
from profiling.forwarding import Erased, Marker, follow_merges
from profiling.models import ProfileModels
from profiling.pipeline import SourceRecord, dead_letter_for
from profiling.risk import LearntLabel, kept_features, learnt_label, with_label
from profiling.store import ProfileStore


class Label(msgspec.Struct, frozen=True):
    """One fraud verdict on an earlier event (unknown extra fields are ignored)."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    label: Literal[0, 1]
    ts: Annotated[int, msgspec.Meta(ge=MIN_TS_MS)]


_decoder = msgspec.json.Decoder(Label)


@dataclass(slots=True)
class LabelResult:
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    # learnt / duplicate / unknown / stale_features / skipped / invalid
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # dead letters per error code


def decode_label(raw: bytes | None) -> Label | Rejection:
    """A label, or why the record is not one."""
    return decode_record(_decoder, raw, INVALID_LABEL)


async def apply_labels(
    records: Sequence[SourceRecord], store: ProfileStore, models: ProfileModels, now_ms: int
) -> LabelResult:
    """Learn from a batch of label records; return dead letters and counts."""
    result = LabelResult()
    pending: list[Label] = []
    positions: list[tuple[int, int]] = []  # (partition, offset) of each pending label
    for record in records:
        if models.learnt(record.topic, record.partition, record.offset):
            result.outcomes["skipped"] += 1
            continue
        verdict = decode_label(record.value)
        if not isinstance(verdict, Rejection) and record.key != verdict.user_id.encode():
            verdict = Rejection(KEY_MISMATCH, "record key must be the label's user_id (UTF-8)")
        if isinstance(verdict, Rejection):
            result.outcomes["invalid"] += 1
            result.errors[verdict.error] += 1
            result.dead_letters.append((record.key, dead_letter_for(record, verdict, now_ms)))
        else:
            pending.append(verdict)
            positions.append((record.partition, record.offset))
    where = [(label.user_id, label.event_id) for label in pending]
    kept = await store.load_scored(where)
    await _follow_merges(pending, kept, where, store)
    learnt: dict[tuple[str, str], bytes] = {}  # where -> features with this batch's label
    lessons: list[tuple[dict[str, float], bool]] = []
    for label, position, place, stored in zip(pending, positions, where, kept, strict=True):
        features = learnt.get(place, stored)
        if features is None:
            result.outcomes["unknown"] += 1
            continue
        readable = kept_features(features)
        if readable is None:  # kept by a version with other features
            result.outcomes["stale_features"] += 1
            continue
        fraud = bool(label.label)
        before = learnt_label(features)
        if before is not None and before.fraud is fraud and before.at != position:
            result.outcomes["duplicate"] += 1  # another record with the same verdict
            continue
        lessons.append((readable, fraud))
        learnt[place] = with_label(features, LearntLabel(fraud, *position))
        result.outcomes["learnt"] += 1
    # Learnt once the labels are stored: a store error here is retried with the batch,
    # which would otherwise teach the model these labels again. A crash in between
    # teaches them on the replay: a label stored at this record's own position is
    # no duplicate.
    await store.relabel_scored([(user, event, value) for (user, event), value in learnt.items()])
    for lesson, fraud in lessons:
        models.learn_label(lesson, fraud)
    for record in records:
        models.advance(record.topic, record.partition, record.offset)
    return result


async def _follow_merges(
    labels: Sequence[Label],
    kept: list[bytes | None],
    where: list[tuple[str, str]],
    store: ProfileStore,
) -> None:
    """Fill in the features (and where they are) of labels whose user was merged into
    another since: a merge moves the features, and an event forwarded after it is
    scored under the user holding the merge's events.

    A late event goes to the holder of the first erasure of its user later than
    the event (`profiling.forwarding`); the label would follow it there, but its
    `ts` is when the verdict was given, not the event's time, which nothing kept
    tells (the features are found by event id alone). So a label tries the
    holder of each merge of its user's marker, routed as an event just older
    than that merge is: every event between two erasures goes where the later
    one sent it, so one of these holds the features, if any does, and event ids
    are unique, so the one holding them is the event's. Merges chain, loop and
    are bounded as for events; a user erased (GDPR) took them with it.
    """
    missing = [i for i, features in enumerate(kept) if features is None]
    if not missing:
        return
    markers = await store.markers(list(dict.fromkeys(labels[i].user_id for i in missing)))
    times = {  # an event just older than each merge goes where that merge sent them
        user: {at - 1 for at, into in _erasures(marker) if into is not None}
        for user, marker in markers.items()
    }
    routes = await follow_merges(markers, {u: t for u, t in times.items() if t}, store)
    tried = [
        (i, holder)
        for i in missing
        for _, holder in routes.get(labels[i].user_id, ())
        if isinstance(holder, str) and holder != labels[i].user_id  # looked there already
    ]
    found = await store.load_scored([(holder, labels[i].event_id) for i, holder in tried])
    for (i, holder), features in zip(tried, found, strict=True):
        if features is not None and kept[i] is None:
            kept[i], where[i] = features, (holder, labels[i].event_id)


def _erasures(marker: Marker) -> tuple[Erased, ...]:
    """Every erasure a marker keeps, oldest first, the last one too."""
    return (*marker.earlier, (marker.erased_at, marker.merged_into))
