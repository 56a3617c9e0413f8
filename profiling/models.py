"""Segments and fraud risk in the batch pipeline: the stage between folding and writing.

`ProfileModels.update` runs after the aggregates (and vectors) of a batch are
folded, before the profiles are written. For each user it walks the applied
events in event time through the bounded behaviour state
(`profiling.behaviour`), scores every purchase and login (`profiling.risk`),
keeps the features each scored event had (so a fraud label arriving days
later can be learnt from them), raises an alert at or above the threshold,
and assigns the user's segment (`profiling.segments`). A segment move or a
risk band change makes the profile's change message due (a user's first risk
only above the lowest band: a low one waits for the heartbeat).

Alerts are stored on the profile with the version that raised them, so a
replayed batch (crash after the write, before the acks) sends the same alerts
again; `alert_id` is a digest of (user_id, event_id), so consumers see one alert.

`snapshot` / `restore` carry the models and the Kafka offsets they have learnt
up to; the edge signs them (`profiling.snapshots`). A restored worker keeps its
own settings (alert threshold, segment hysteresis) and refuses a snapshot it
cannot continue from (another format or number of segments).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from profiling import jsonout, slots
from profiling.behaviour import (
    PROFILE_FEATURES,
    TRANSACTION_FEATURES,
    Behaviour,
    Fingerprint,
    observe_all,
    profile_row,
    token,
    vector_projection,
)
from profiling.currency import SAME_CURRENCY, Currencies
from profiling.events import Event
from profiling.profile import SCORE_THEN_NAME, Outcome, Profile, make_outcome
from profiling.risk import (
    ANOMALY,
    Risk,
    RiskModel,
    ScoredBatch,
    keep_features,
    risk_band_moved,
)
from profiling.rounding import round6
from profiling.segments import SEGMENT_FEATURES, Assignment, SegmentModel
from profiling.snapshots import SnapshotRefusedError

SNAPSHOT_FORMAT: Final = 1
REASONS_FLOOR: Final = 0.1  # below this risk, reasons say nothing an analyst needs
_with_verdicts: Final = slots.replacer_of(
    Profile,
    ("behaviour", "alerts", "risk", "risk_reasons", "segment", "segment_dwell", "prev_segment",
     "unpublished", "published_at", "published_version"),
)  # fmt: skip


def alert_id(user_id: str, event_id: str) -> str:
    """The same event always gives the same alert id (replays, restarts, other workers)."""
    digest = hashlib.blake2b(f"{user_id}\x1f{event_id}".encode(), digest_size=16)
    return digest.hexdigest()


@dataclass
class ProfileModels:
    """The River models of one worker and how their verdicts reach profiles."""

    risk: RiskModel = field(default_factory=RiskModel)
    segments: SegmentModel = field(default_factory=SegmentModel)
    alert_threshold: float = 0.8
    dim: int = 384
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> last learnt
    alerts_raised: int = 0
    fingerprint: Fingerprint = token  # devices, countries, cards in profiles (`keyed_token`)
    currencies: Currencies = SAME_CURRENCY  # what amounts and prices count in

    def __post_init__(self) -> None:
        if not 0 < self.alert_threshold < 1:
            raise ValueError("alert_threshold must be in (0, 1)")
        if self.risk.calibration_threshold != self.alert_threshold:
            self.risk.recalibrate(self.alert_threshold)
        self._projection = vector_projection(self.dim)
        self._scores: list[tuple[str, float]] = []  # (event_id, risk) since observations()
        self._moves = 0
        self._drifts_seen = self.risk.drifts

    def observations(self) -> tuple[list[tuple[str, float]], int, int]:
        """(event_id, risk) of events scored, drifts and segment moves since the last call."""
        scores, self._scores = self._scores, []
        moves, self._moves = self._moves, 0
        drifts, self._drifts_seen = self.risk.drifts - self._drifts_seen, self.risk.drifts
        return scores, drifts, moves

    def update(
        self, outcomes: Sequence[Outcome], now_ms: int, *, learn: bool = True
    ) -> list[Outcome]:
        """The outcomes with behaviour, risk, alerts and segments folded into their profiles.

        `learn=False` scores and assigns without learning: for events the models
        learnt already (a batch folded again after a write that did not land).
        """
        written = [o for o in outcomes if o.applied]  # `o.wrote`, without the property call
        if not written:
            return list(outcomes)
        fingerprint, currencies = self.fingerprint, self.currencies
        folded = [
            observe_all(
                o.profile.behaviour or _seeded(o, currencies), o.applied, fingerprint, currencies
            )
            for o in written
        ]
        scored = [
            (user, event, features)
            for user, (outcome, (_, all_features)) in enumerate(zip(written, folded, strict=True))
            # One entry per applied event (`observe_all`): not strict, whose keyword costs
            # a dict per user.
            for event, features in zip(outcome.applied, all_features)  # noqa: B905
            if features is not None
        ]
        # In event time, not user by user: the models learn in turn, and the order must
        # not depend on which users a batch happened to hold.
        scored.sort(key=_in_event_time)
        batch = self.risk.scored_batch([features for _, _, features in scored], learn=learn)
        # Only the users with a scored event have verdicts to work out: the others
        # keep `_UNSCORED`, and no list is made for them.
        per_user: dict[int, list[tuple[Event, dict[str, float], int]]] = {}
        threshold, alerts = self.alert_threshold, 0
        for i, ((user, event, features), risk, anomaly) in enumerate(
            zip(scored, batch.risks, batch.raws, strict=True)
        ):
            features[ANOMALY] = anomaly  # ours: a fresh dict per event
            events = per_user.get(user)
            if events is None:
                per_user[user] = [(event, features, i)]
            else:
                events.append((event, features, i))
            self._scores.append((event.event_id, risk))
            alerts += risk >= threshold  # `_verdicts` raises one alert for each
        if learn:  # a batch folded again raises the alerts its first fold counted
            self.alerts_raised += alerts
        verdicts = [_UNSCORED] * len(written)
        for user in sorted(per_user):  # in the users' order, as they come
            verdicts[user] = self._verdicts(written[user], folded[user][0], per_user[user], batch)
        tastes = self._tastes(written)
        rows, current, tops = [], [], []
        for o, (state, _), taste in zip(written, folded, tastes, strict=True):
            row, top = self._segment_inputs(o.profile, state, taste)
            rows.append(row)
            current.append((o.profile.segment, o.profile.segment_dwell))
            tops.append(top)
        assignments = self.segments.assign_rows(rows, current, tops, learn=learn)
        updated = iter([
            self._fold(outcome, state, changes, kept, assignment)
            for outcome, (state, _), (changes, kept), assignment in zip(
                written, folded, verdicts, assignments, strict=True
            )
        ])  # fmt: skip
        # `written` is `outcomes` less those without applied events, in order.
        return [next(updated) if o.applied else o for o in outcomes]

    def _verdicts(
        self,
        outcome: Outcome,
        state: Behaviour,
        scored: list[tuple[Event, dict[str, float], int]],
        batch: ScoredBatch,
    ) -> tuple[dict[str, Any], tuple[tuple[str, bytes], ...]]:
        """One user's profile changes and kept features, from their scores (`scored`: each
        event with its features and its place in the scored `batch`; a user without one
        gets `_UNSCORED`)."""
        profile = outcome.profile
        snapshots: list[tuple[str, bytes]] = []
        alerts: list[str] = []
        risks = batch.risks
        explained: Risk | None = None  # the last event's, when it raised an alert
        for event, features, i in scored:
            snapshots.append((event.event_id, keep_features(features)))
            explained = None
            if risks[i] >= self.alert_threshold:
                explained = self.risk.explain_scored(batch, i, features)
                alerts.append(self._alert(profile.user_id, event, explained, features))
        changes: dict[str, Any] = {"alerts": tuple(alerts)}
        # `risk` is the latest event's in event time: events older than one an earlier
        # batch scored (late ones) raise their alerts but leave the risk to it.
        if scored and (profile.risk is None or scored[-1][0].ts >= state.last_scored):
            _, features, i = scored[-1]
            risk = risks[i]
            changes["risk"] = round6(risk)
            reasons = []
            if risk >= REASONS_FLOOR:
                if explained is None:
                    explained = self.risk.explain_scored(batch, i, features)
                reasons = explained.reasons_json(features)
            changes["risk_reasons"] = jsonout.dumps(reasons).decode() if reasons else "[]"
        return changes, tuple(snapshots)

    def _alert(self, user_id: str, event: Event, risk: Risk, features: Mapping[str, float]) -> str:
        body = {
            "alert_id": alert_id(user_id, event.event_id),
            "user_id": user_id,
            "event_id": event.event_id,
            "ts": event.ts,
            "risk": round(risk.score, 6),
            "threshold": self.alert_threshold,
            "reasons": risk.reasons_json(features),
            "model_version": self.risk.version,
        }
        return jsonout.dumps(body).decode()

    def _tastes(self, outcomes: Sequence[Outcome]) -> list[list[float] | None]:
        """Each profile's `vec_long` through the projection (one product for the batch)."""
        size = 4 * self.dim
        raw = [
            o.profile.interest.vec_long
            if o.profile.interest is not None
            and o.profile.interest.vec_long is not None
            and len(o.profile.interest.vec_long) == size  # else another encoder's space
            else None
            for o in outcomes
        ]
        present = [vector for vector in raw if vector is not None]
        if not present:
            return [None] * len(outcomes)
        vectors = np.frombuffer(b"".join(present), dtype="<f4").reshape(len(present), self.dim)
        projected = iter((vectors @ self._projection.T).tolist())
        return [None if vector is None else next(projected) for vector in raw]

    def _profile_features(
        self, profile: Profile, behaviour: Behaviour, taste: list[float] | None
    ) -> dict[str, float]:
        """The profile's segment features by name (`_segment_inputs`' row)."""
        row, _ = self._segment_inputs(profile, behaviour, taste)
        return dict(zip(PROFILE_FEATURES, row, strict=True))

    def _segment_inputs(
        self, profile: Profile, behaviour: Behaviour, taste: list[float] | None
    ) -> tuple[tuple[float, ...], str | None]:
        """`profile_row` of the profile (in SEGMENT_FEATURES order), and its
        top category (None without one): what the segments read of it, in one call."""
        scores = profile.category_scores
        top, focus = None, 0.0
        if scores:
            # The top category's score is the highest: the category focus's numerator.
            top, highest = max(scores.items(), key=SCORE_THEN_NAME)
            total = sum(scores.values())
            focus = highest / total if total > 0 else 0.0
        row = profile_row(
            profile.counts,
            profile.events,
            profile.spend,
            # Orders, not purchase events: a shop's order of many lines counts once
            # (the behaviour's priced orders; `spend` holds priced money only too).
            behaviour.amount_n,
            profile.first_seen,
            profile.last_seen,
            behaviour,
            focus,
            taste,
        )
        return row, top

    def _fold(
        self,
        outcome: Outcome,
        behaviour: Behaviour,
        changes: Mapping[str, Any],
        snapshots: tuple[tuple[str, bytes], ...],
        assignment: Assignment,
    ) -> Outcome:
        """The outcome with the models' verdicts in its profile (one copy of the profile)."""
        before = outcome.profile
        moved = before.segment != assignment.segment
        risk = changes.get("risk", before.risk)
        changed: set[str] = set()
        if moved:
            changed.add("segment")
            self._moves += before.segment is not None
        band_moved = False
        if risk != before.risk:
            changed.update(("risk", "risk_reasons"))
            band_moved = risk_band_moved(before.risk, risk, self.alert_threshold)
        publish = outcome.publish or moved or band_moved
        # Published here and not by the fold: the message carries the stored version.
        newly = publish and not outcome.publish
        profile = _with_verdicts(
            before,
            behaviour,
            before.alerts + changes["alerts"],  # a replayed write's, then this batch's
            risk,
            changes.get("risk_reasons", before.risk_reasons),
            assignment.segment,
            assignment.since,  # segment_dwell
            before.segment if moved else before.prev_segment,
            before.unpublished | changed if changed else before.unpublished,
            before.updated if newly else before.published_at,
            before.version if newly else before.published_version,
        )  # positional: the fields `_with_verdicts` names, in its order
        return make_outcome((
            profile,
            outcome.applied,
            outcome.duplicates,
            outcome.replayed,
            outcome.changed | changed if changed else outcome.changed,
            publish,
            snapshots,
            outcome.suppressed,
            outcome.forwarded,
            outcome.stranded,
        ))  # fmt: skip

    def learn_label(self, features: Mapping[str, float], label: bool) -> None:
        self.risk.learn_label(features, label)

    def learnt(self, topic: str, partition: int, offset: int) -> bool:
        """Whether the record at this position was learnt before the snapshot we restored."""
        return offset <= self.offsets.get(f"{topic}:{partition}", -1)

    def next_to_learn(self, topic: str, partition: int) -> int | None:
        """The offset after the last record learnt from this partition; None when none was.

        Where a worker with these models reads the partition's labels from: the
        offsets committed may be past labels learnt only by models lost since.
        """
        last = self.offsets.get(f"{topic}:{partition}")
        return None if last is None else last + 1

    def advance(self, topic: str, partition: int, offset: int) -> None:
        key = f"{topic}:{partition}"
        if offset > self.offsets.get(key, -1):
            self.offsets[key] = offset

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "risk": self.risk,
            "segments": self.segments,
            "offsets": dict(self.offsets),
            "alerts_raised": self.alerts_raised,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a snapshot's models under the current settings.

        What the models learnt comes from the snapshot; what the settings decide
        stays as configured: the alert threshold the risk is calibrated for, and
        the segments' switch margin and minimum dwell. A snapshot this worker
        cannot continue from (another format, a part missing, another number of
        segments) raises SnapshotRefusedError and changes nothing.
        """
        risk, segments, offsets, alerts_raised = _snapshot_parts(state, self.segments.n_segments)
        segments.switch_margin = self.segments.switch_margin
        segments.min_dwell = self.segments.min_dwell
        if getattr(risk, "calibration_threshold", None) != self.alert_threshold:
            risk.recalibrate(self.alert_threshold)
        self.risk, self.segments, self.offsets = risk, segments, offsets
        self.alerts_raised = alerts_raised
        self._drifts_seen = risk.drifts


_FRESH: Final = "delete the snapshot to start fresh models"


def _snapshot_parts(
    state: object, n_segments: int
) -> tuple[RiskModel, SegmentModel, dict[str, int], int]:
    """The risk model, segment model, offsets and alert count of a snapshot, checked.

    A signed snapshot is one this deployment wrote, but maybe by another version
    or with other settings: what does not fit is refused, never half loaded.
    """
    if not isinstance(state, Mapping):
        raise SnapshotRefusedError(f"not a model snapshot ({type(state).__name__}): {_FRESH}")
    found = state.get("format")
    if found != SNAPSHOT_FORMAT:
        raise SnapshotRefusedError(
            f"model snapshot format {found!r} is not format {SNAPSHOT_FORMAT}, which this "
            f"version reads: run the version that wrote it, or {_FRESH}"
        )
    missing = [key for key in ("risk", "segments", "offsets") if key not in state]
    if missing:
        raise SnapshotRefusedError(f"model snapshot lacks {', '.join(missing)}: {_FRESH}")
    risk, segments, offsets = state["risk"], state["segments"], state["offsets"]
    alerts_raised = state.get("alerts_raised", 0)
    for name, value, kind in (
        ("risk", risk, RiskModel),
        ("segments", segments, SegmentModel),
        ("offsets", offsets, Mapping),
        ("alerts_raised", alerts_raised, int),
    ):
        if not isinstance(value, kind):
            raise SnapshotRefusedError(
                f"model snapshot holds a {type(value).__name__} as {name}: {_FRESH}"
            )
    # Pickled by a version that scored other features (SNAPSHOT_FORMAT was not always
    # bumped with them): restored, every batch with a purchase or login would fail on
    # the features' count, and its events be dead-lettered.
    kept = getattr(getattr(risk, "population", None), "names", None)
    member_sums = getattr(segments, "member_sums", None)
    columns = getattr(member_sums, "shape", (0, 0))[1:]
    if kept != TRANSACTION_FEATURES or columns != (len(SEGMENT_FEATURES),):
        raise SnapshotRefusedError(
            "model snapshot of a version with other features (risk: "
            f"{len(kept) if isinstance(kept, tuple) else '?'}, this version "
            f"{len(TRANSACTION_FEATURES)}; segments: {columns[0] if columns else '?'}, this "
            f"version {len(SEGMENT_FEATURES)}): {_FRESH}"
        )
    if segments.n_segments != n_segments:
        raise SnapshotRefusedError(
            f"model snapshot has {segments.n_segments} segments, the settings ask for "
            f"{n_segments}: set PROFILER_SEGMENTS={segments.n_segments} to continue from it, "
            f"or {_FRESH}"
        )
    return risk, segments, dict(offsets), alerts_raised


def _in_event_time(item: tuple[int, Event, dict[str, float]]) -> tuple[int, str]:
    _, event, _ = item
    return event.ts, event.user_id


def _seeded(outcome: Outcome, currencies: Currencies) -> Behaviour:
    """The behaviour state of a profile that has none: empty for a user new with this
    batch; for one written without the models (switched on since, or a profile of an
    earlier version), what the aggregates knew before the batch: since when the
    account is known, its orders and their mean amount. A long-time customer was
    scored as a new account with a first order (the devices and cards it used
    cannot be known)."""
    profile, applied = outcome.profile, outcome.applied
    if profile.events <= len(applied):
        return Behaviour()
    # The profile is folded already: this batch's purchases come out of its figures.
    purchases = [event for event in applied if event.type == "purchase"]
    orders = profile.orders - len(purchases)
    if orders <= 0:
        return Behaviour(first_ts=profile.first_seen)
    spent = sum(
        amount
        for event in purchases
        if (amount := currencies.value(event.amount, event.currency)) is not None
    )
    return Behaviour(
        first_ts=profile.first_seen,
        orders=(profile.first_seen,),  # when they were is not kept: long ago will do
        amount_n=orders,
        amount_mean=max(0.0, profile.spend - spent) / orders,
    )


# A user none of whose events was scored: no alerts, the risk left as it was.
_UNSCORED: Final[tuple[Mapping[str, Any], tuple[tuple[str, bytes], ...]]] = (
    MappingProxyType({"alerts": ()}),
    (),
)
