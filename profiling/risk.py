"""Fraud risk of purchases and logins: an anomaly model, blended with a classifier once labels come.

Before any label arrives, risk is River's HalfSpaceTrees anomaly score over the
transactional features (`profiling.behaviour`), min-max scaled online: events
unlike the shop's usual traffic score high. Fraud labels arrive days later
(`learn_label`); from then on a logistic regression learns which features mean
fraud, and its probability, weighted by labels / (labels + `label_half_weight`)
(at most `max_label_weight`, and only once both classes were seen), joins the
anomaly risk as a noisy-or: 1 - (1 - weighted probability) x (1 - anomaly
risk). Either side can raise the risk, so a kind of fraud that no label has
shown yet still alerts through the anomaly side.

A fresh model's first anomaly scores mean nothing: the trees score 0 until
their first window (250 events) is full, and percentiles over a few hundred
scores are noise. Past the first window, every score sat at the top of a
histogram of zeros: one scored event in nine raised an alert, against one in
two hundred later. So the calibration learns from the trees' second window
on, and the anomaly side counts once it knows `CALIBRATION_MIN_SCORES`
scores; until then (750 scored events), only labels can raise the risk.

Reasons: each feature's share of the risk, top 3. The classifier's part is its
weight times the standardised feature; the anomaly part is how far the
feature sits on its risky side of the shop's mean (in standard deviations,
from a scaler that sees every scored event): above it for most features,
below it for the account's age (a young account, never an old one). A feature
that has not varied (no logins in a shop's data) is no reason. Shares are
scaled to sum to the risk, so a reader can say "this much of 0.93 came from
the new card".

The models are global to a worker and learn online; they are not part of a
profile's idempotent state (DESIGN.md §8: checkpointed with offsets instead).
A drift detector (ADWIN) watches the stream of risk scores.
"""

from __future__ import annotations

import math
import operator
import random
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np
import orjson
from river import anomaly, compose, drift, linear_model, optim, preprocessing

from profiling.behaviour import TRANSACTION_FEATURES, feature_matrix
from profiling.hst import FlatHalfSpaceTrees

RISK_MODEL: Final = "hst-lr-v1"
REFRESH_EVERY: Final = 64
CALIBRATION_MIN_SCORES: Final = 500  # anomaly scores learnt before they make any risk
FLAT: Final = 1e-9  # a feature whose range is this small next to its values never varied
# Features whose low values are the unusual, risky side (the rest: high values).
RISKIER_LOW: Final = frozenset({"account_age_days"})
# What an event either is or has (1) or not (0): a reason when set, never by its absence
# ("a login" named for a purchase the classifier had learnt logins were safer than).
FLAGS: Final = frozenset(
    {"first_order", "new_device", "new_country", "new_card", "is_login", "login_failed"}
)
# A purchase's own features, 0 for a login: no reason for a login's risk.
PURCHASE_ONLY: Final = frozenset(
    {"amount_log", "amount_vs_usual", "first_order", "new_card", "cart_to_purchase_min"}
)
ANOMALY: Final = "anomaly"  # the raw HalfSpaceTrees score, a feature of the classifier
KEPT_FEATURES: Final = (*TRANSACTION_FEATURES, ANOMALY)
_KEPT_FORMAT: Final = b"\x01"  # then float32 little-endian, one per KEPT_FEATURES name
_KEPT_PACK: Final = struct.Struct(f"<{len(KEPT_FEATURES)}f")
_ZEROS: Final = dict.fromkeys(KEPT_FEATURES, 0.0)
_KEPT_VALUES: Final = operator.itemgetter(*KEPT_FEATURES)


def keep_features(features: Mapping[str, float]) -> bytes:
    """A scored event's features as kept for its label: 73 bytes (float32 is plenty here)."""
    try:  # the usual case, every feature present: one C call
        values = _KEPT_VALUES(features)
    except KeyError:
        values = tuple(features.get(name, 0.0) for name in KEPT_FEATURES)
    return _KEPT_FORMAT + _KEPT_PACK.pack(*values)


def kept_features(raw: bytes) -> dict[str, float] | None:
    """The features `keep_features` kept (or a JSON object of them, the earlier format);
    None for features this version cannot read: kept by a version that scored another
    number of features (its floats cannot be told apart), or not features at all."""
    if raw[:1] == _KEPT_FORMAT:
        if len(raw) - 1 - _KEPT_PACK.size in (0, _LEARNT.size):
            return dict(zip(KEPT_FEATURES, _KEPT_PACK.unpack_from(raw, 1), strict=True))
        return None
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


# After the kept features, once a label was learnt from them: the label, and the
# partition and offset of the label record that taught it.
_LEARNT: Final = struct.Struct("<?Iq")


class LearntLabel(NamedTuple):
    fraud: bool
    partition: int  # of the fraud-labels record that taught it
    offset: int

    @property
    def at(self) -> tuple[int, int]:
        """(partition, offset) of the record that taught it."""
        return self.partition, self.offset


def with_label(raw: bytes, learnt: LearntLabel) -> bytes:
    """Kept features and the label learnt from them, with the record that taught it.

    The same label from another record (a producer's re-send) then finds itself
    learnt already, while the same record read again (a replay after a crash,
    past the restored model snapshot) is learnt again. Features of the earlier
    JSON format stay as they are.
    """
    if raw[:1] != _KEPT_FORMAT:
        return raw
    return raw[: 1 + _KEPT_PACK.size] + _LEARNT.pack(*learnt)


def learnt_label(raw: bytes) -> LearntLabel | None:
    """The label these kept features were learnt with (`with_label`), or None."""
    if raw[:1] != _KEPT_FORMAT or len(raw) != 1 + _KEPT_PACK.size + _LEARNT.size:
        return None
    return LearntLabel(*_LEARNT.unpack_from(raw, 1 + _KEPT_PACK.size))


RISK_BANDS: Final = ("low", "medium", "high")


def risk_band(risk: float | None, threshold: float = 0.8) -> str | None:
    """A coarse label of risk that changes rarely: publication follows band changes, not noise."""
    return None if risk is None else RISK_BANDS[_band(risk, threshold)]


def risk_band_moved(before: float | None, after: float | None, threshold: float = 0.8) -> bool:
    """Whether the risk moved to another band, which makes a change message due.

    No risk yet counts as the lowest band: a user's first purchase or login
    almost always scores low, and a message for that alone, due at once, went
    round the heartbeat that holds back counter changes (the risk still rides
    with the next message). A first risk in a higher band is news.
    """
    return _band(before or 0.0, threshold) != _band(after or 0.0, threshold)


def _band(risk: float, threshold: float) -> int:
    """The index of `risk`'s band in `RISK_BANDS`: high from `threshold`, medium from 0.5
    (or from `threshold`, when it is lower)."""
    return (risk >= min(0.5, threshold)) + (risk >= threshold)


@dataclass(frozen=True, slots=True)
class Risk:
    """A score in [0, 1] and the features that made it, largest share first."""

    score: float
    reasons: tuple[tuple[str, float], ...]  # (feature, contribution), top 3

    def reasons_json(self, features: Mapping[str, float]) -> list[dict[str, Any]]:
        # Cut down to 4 places, not rounded: they must not sum above the risk
        # (the float noise of the product rounded away first, 0.29 stays 0.29).
        return [
            {
                "feature": name,
                "contribution": math.floor(round(share * 10_000, 6)) / 10_000,
                "detail": explain(name, features),
            }
            for name, share in self.reasons
        ]


class ScoredBatch:
    """A batch's risks as `RiskModel.scored_batch` made them, and what each was made of.

    An event's reasons say what its risk was made of when it was scored, so they
    do not depend on how many events its batch held: each side's part of the
    noisy-or (kept by the scoring loop, two floats an event), and the shop's
    statistics as they stood for that event (before the batch, then in turn:
    each event against the events before it and itself, as it was scaled). The
    z-scores are worked out for the whole batch in one vectorised step, and only
    once some event's reasons are asked for.
    """

    __slots__ = ("_in_turn", "_matrix", "_population", "_z", "parts", "raws", "risks")

    def __init__(
        self,
        risks: list[float],
        raws: list[float],
        parts: list[tuple[float, float]],
        matrix: np.ndarray[Any, Any],
        population: Population,
        *,
        in_turn: bool,
    ) -> None:
        self.risks = risks
        self.raws = raws
        self.parts = parts  # (supervised, anomalous): each side's part of each risk
        self._matrix = matrix  # the events' features, in TRANSACTION_FEATURES order
        self._population = population  # before the batch if it learnt the batch (in turn)
        self._in_turn = in_turn
        self._z: np.ndarray[Any, Any] | None = None

    def z(self, i: int) -> list[float]:
        """Event `i`'s z-scores (`Population.z`) as they stood when it was scored."""
        if self._z is None:
            population, matrix = self._population, self._matrix
            self._z = population.z_in_turn(matrix) if self._in_turn else population.z_rows(matrix)
        return self._z[i].tolist()  # type: ignore[no-any-return]


class RiskModel:
    """HalfSpaceTrees (unsupervised) blended with logistic regression (from delayed labels)."""

    def __init__(
        self,
        *,
        seed: int = 42,
        n_trees: int = 5,
        height: int = 8,
        window_size: int = 250,
        label_half_weight: float = 100.0,
        max_label_weight: float = 0.95,
        alert_threshold: float = 0.8,
        anomaly_alert_share: float = 0.005,
        label_replays: int = 4,
        replay_size: int = 5000,
    ) -> None:
        if n_trees < 1 or height < 1 or window_size < 1:
            raise ValueError("n_trees, height and window_size must be at least 1")
        if label_half_weight <= 0 or not 0 <= max_label_weight <= 1:
            raise ValueError("label_half_weight must be > 0 and max_label_weight in [0, 1]")
        self.trees = anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self._flat: FlatHalfSpaceTrees | None = None  # the trees' working form, once built
        self.anomaly_alert_share = anomaly_alert_share
        self.calibration_threshold = alert_threshold
        self.calibration = Calibration.for_share(anomaly_alert_share, alert_threshold)
        # Min-max scaling for the trees (they want [0, 1]) and the mean and spread that
        # "unusual" is measured against, kept in one pass over each event's features.
        self.population = Population(TRANSACTION_FEATURES)
        self.classifier = compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-4),
        )
        self.label_replays = label_replays
        self.replay: deque[tuple[dict[str, float], bool]] = deque(maxlen=replay_size)
        self._rng = random.Random(seed)
        self.label_half_weight = label_half_weight
        self.max_label_weight = max_label_weight
        self.labels = {0: 0, 1: 0}
        self.scored = 0
        self.drift = drift.ADWIN()
        self.drifts = 0

    def recalibrate(self, alert_threshold: float) -> None:
        """Bend the anomaly risk so the top `anomaly_alert_share` reaches this threshold."""
        self.calibration.gamma = Calibration.for_share(
            self.anomaly_alert_share, alert_threshold
        ).gamma
        self.calibration_threshold = alert_threshold

    @property
    def label_weight(self) -> float:
        """How much of the risk comes from the classifier now."""
        if not (self.labels[0] and self.labels[1]):
            return 0.0
        n = self.labels[0] + self.labels[1]
        return min(self.max_label_weight, n / (n + self.label_half_weight))

    @property
    def version(self) -> str:
        return f"{RISK_MODEL}+{self.labels[0] + self.labels[1]}labels"

    def score(self, features: Mapping[str, float], *, learn: bool = True) -> tuple[float, float]:
        """(risk in [0, 1], raw anomaly score) of one event; then (by default) learn it."""
        return self.score_batch([features], learn=learn)[0]

    def score_batch(
        self, batch: Sequence[Mapping[str, float]], *, learn: bool = True
    ) -> list[tuple[float, float]]:
        """(risk, raw anomaly score) of each event, in order, learning each after its score."""
        scored = self.scored_batch(batch, learn=learn)
        return list(zip(scored.risks, scored.raws, strict=True))

    def scored_batch(
        self, batch: Sequence[Mapping[str, float]], *, learn: bool = True
    ) -> ScoredBatch:
        """Each event's risk and raw anomaly score, in order, learning each after its score,
        with what each risk was made of for its reasons (`explain_scored`).

        Every event is min-max scaled (the trees want [0, 1]) against the range
        of the events before it and itself, as if they came one at a time (in
        one vectorised step), the shop-wide statistics then learn the batch, and
        the whole batch goes through the trees at once
        (`profiling.hst`: River's scores, event by event, to the bit). The raw
        anomaly score is a feature of the classifier too (stacking): keep it
        with the features, so a label joins with exactly what was scored.
        Reasons cost as much as the score, so they are asked for separately,
        for the events whose reasons are kept; all the loop keeps for them is
        each side's part of the noisy-or.
        """
        population = self.population
        if not batch:
            empty = np.zeros((0, len(TRANSACTION_FEATURES)))
            return ScoredBatch([], [], [], empty, population.copy(), in_turn=False)
        matrix = feature_matrix(batch, TRANSACTION_FEATURES)
        before = population.copy()  # what the events' z-scores are measured from, in turn
        scaled = population.scale_and_learn(matrix) if learn else population.scale(matrix)
        raws = self._anomaly_scores(scaled, learn)
        weight = self.label_weight
        calibration, drift = self.calibration, self.drift
        first_window = self.trees.window_size - self.scored  # events left in it, if > 0
        anomaly_from = self._anomaly_from(first_window, len(batch), learn)
        # The trees' first window scores 0: the calibration has nothing to learn from it.
        anomalous_risks = calibration.risks_in_turn(
            raws, anomaly_from, first_window if learn else len(raws)
        )
        risks: list[float] = []
        parts: list[tuple[float, float]] = []
        for x, raw, anomalous in zip(batch, raws, anomalous_risks, strict=True):
            supervised = self._supervised(x, raw, weight) if weight else 0.0
            # Noisy-or: either side can raise the risk. A kind of fraud no label has
            # shown yet still alerts through the anomaly side (its top share of traffic).
            risk = min(1.0, max(0.0, 1.0 - (1.0 - supervised) * (1.0 - anomalous)))
            if learn:
                drift.update(risk)
                if drift.drift_detected:
                    self.drifts += 1
            risks.append(risk)
            parts.append((supervised, anomalous))
        if learn:
            self.scored += len(risks)
        return ScoredBatch(risks, raws, parts, matrix, before, in_turn=learn)

    def _anomaly_from(self, first_window: int, size: int, learn: bool) -> int:
        """The first event of the batch whose score the anomaly side joins: the one by
        which the calibration knows `CALIBRATION_MIN_SCORES` scores (it learns each
        scored event past the trees' first window, after its score)."""
        missing = CALIBRATION_MIN_SCORES - self.calibration.learnt
        if missing <= 0:
            return 0
        return max(0, first_window) + missing if learn else size

    def _supervised(self, x: Mapping[str, float], raw: float, weight: float) -> float:
        """The classifier's side of the risk: its fraud probability of `x` with the raw
        anomaly score `raw` (stacking), times the label weight."""
        plain = {name: value for name, value in x.items() if name != ANOMALY}
        proba = self.classifier.predict_proba_one({**plain, ANOMALY: raw}).get(True, 0.0)
        return weight * float(proba)

    def _anomaly_scores(self, scaled: np.ndarray[Any, Any], learn: bool) -> list[float]:
        """HalfSpaceTrees' raw score of each scaled row, learning each after its score."""
        raws: list[float] = []
        if self._flat is None:
            if not self.trees.trees:  # River builds its trees from the first event it learns
                if not learn:
                    return [0.0] * len(scaled)  # an empty model scores everything 0
                first = dict(zip(TRANSACTION_FEATURES, scaled[0].tolist(), strict=True))
                raws.append(float(self.trees.score_one(first)))
                self.trees.learn_one(first)
                scaled = scaled[1:]
            self._flat = FlatHalfSpaceTrees(self.trees, TRANSACTION_FEATURES)
        return raws + self._flat.score_learn(scaled, learn=learn)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the River trees brought up to date; their working form is rebuilt."""
        if self._flat is not None:
            self._flat.write_back()
        state = dict(self.__dict__)
        state["_flat"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._flat = None  # snapshots from before the working form lack it

    def explain(self, features: Mapping[str, float], risk: float) -> Risk:
        """`risk` with its top-3 reasons, as the models stand now (for features not scored
        in a batch: a scored event's reasons come from `explain_scored`)."""
        raw = features.get(ANOMALY, 0.0)
        weight, calibration = self.label_weight, self.calibration
        supervised = self._supervised(features, raw, weight) if weight else 0.0
        learnt = calibration.learnt >= CALIBRATION_MIN_SCORES
        anomalous = calibration.risk(raw) if learnt else 0.0
        z = self.population.z(features) if anomalous > 0 else []
        return Risk(risk, self._reasons(features, raw, risk, (supervised, anomalous), z))

    def explain_scored(self, scored: ScoredBatch, i: int, features: Mapping[str, float]) -> Risk:
        """The risk of the batch's event `i` (its `features`) with its top-3 reasons, from
        what that risk was made of when the event was scored.

        Not from the models after the whole batch: the calibration and the shop's
        statistics learnt the events after it since, so the same event gave other
        reasons in a batch of 500 than alone, and in the batch where the
        calibration first counted, the anomaly side got a share of risks it had
        no part in. The classifier learns from labels only, never while scoring,
        so its weights are still the ones that scored the batch.
        """
        parts, risk = scored.parts[i], scored.risks[i]
        z = scored.z(i) if parts[1] > 0 else []  # the anomaly side's part: its features' z
        return Risk(risk, self._reasons(features, scored.raws[i], risk, parts, z))

    def learn_label(self, features: Mapping[str, float], label: bool) -> None:
        """A delayed fraud label for an event scored earlier, with the features it had then.

        Labels are few and precious: each is learnt once now and replayed
        `label_replays` times later, drawn at random from the last
        `replay_size` labels (several passes, as a batch learner would make).
        """
        x = {**_ZEROS, **features}  # kept features leave zeros out
        self.classifier.learn_one(x, bool(label))
        for _ in range(self.label_replays if self.replay else 0):
            old_x, old_label = self.replay[self._rng.randrange(len(self.replay))]
            self.classifier.learn_one(old_x, old_label)
        self.replay.append((x, bool(label)))
        self.labels[int(bool(label))] += 1

    def _reasons(
        self,
        x: Mapping[str, float],
        raw: float,
        risk: float,
        parts: tuple[float, float],
        z: Sequence[float],
    ) -> tuple[tuple[str, float], ...]:
        """The top 3 of each feature's share of `risk`.

        Each side's part of the noisy-or (`parts`: supervised `s`, anomalous
        `a`) is split among the features that pushed it: the classifier's (`s`)
        among its positive terms, the anomaly side's (`a(1 - s)`) among the
        features far above the shop's usual (`z`, their z-scores; read only
        when `a` > 0). Split by the sides' parts, not by the label weight: with
        labels, a classifier that said "no fraud" named the reasons for the
        trees' alarm.
        """
        supervised, anomalous = parts
        shares: dict[str, float] = {}
        if supervised > 0:
            _share(shares, self._pushes(x, raw), supervised)
        if anomalous > 0:
            pushes = {
                name: min(max(0.0, -z_score if name in RISKIER_LOW else z_score), 10.0)
                for name, z_score in zip(TRANSACTION_FEATURES, z, strict=True)
            }
            _share(shares, pushes, anomalous * (1.0 - supervised))
        shares = {name: part for name, part in shares.items() if _cited(name, x)}
        total = sum(shares.values())
        if total <= 0:
            return ()
        top = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        return tuple((name, risk * part / total) for name, part in top if part > 0)

    def _pushes(self, x: Mapping[str, float], raw: float) -> dict[str, float]:
        """How far each feature of `x` (with the raw anomaly score `raw`) pushed the
        classifier towards fraud: its weight times the standardised feature, if positive."""
        scaler = self.classifier["StandardScaler"]
        coefficients = self.classifier["LogisticRegression"].weights
        pushes = {}
        for name in KEPT_FEATURES:
            value = raw if name == ANOMALY else x.get(name, 0.0)
            spread = math.sqrt(scaler.vars.get(name, 0.0)) or 1.0
            z = (value - scaler.means.get(name, 0.0)) / spread
            pushes[name] = max(0.0, coefficients.get(name, 0.0) * z)
        return pushes


def _cited(name: str, x: Mapping[str, float]) -> bool:
    """Whether a feature can be a reason for the event `x`: a flag only when set, a
    purchase's feature only for a purchase (the words say what the event had)."""
    if name in FLAGS:
        return x.get(name, 0.0) > 0
    return name not in PURCHASE_ONLY or not x.get("is_login", 0.0)


def _share(parts: dict[str, float], pushes: Mapping[str, float], part: float) -> None:
    """Add `part` to `parts`, split among the features in proportion to their pushes."""
    total = sum(pushes.values())
    if part <= 0 or total <= 0:
        return
    for name, push in pushes.items():
        if push > 0:
            parts[name] = parts.get(name, 0.0) + part * push / total


class Calibration:
    """Raw anomaly scores to risk: their percentile among recent scores, bent at one point.

    HalfSpaceTrees' raw scores are not probabilities, and where they sit depends on
    the traffic. A decayed histogram of recent raw scores gives each new score its
    percentile p; risk = p ** gamma, with gamma chosen so that the top `share` of
    traffic lands at or above the alert threshold. Before labels, that bounds the
    alert rate; afterwards the classifier's probability takes over.
    """

    def __init__(self, gamma: float, bins: int = 256, half_life: float = 20_000.0) -> None:
        self.gamma = gamma
        self.counts = np.zeros(bins)
        self.increment = 1.0
        self.growth = 2.0 ** (1.0 / half_life)  # newer scores weigh more: decay, lazily
        self._learnt = 0
        self._cdf: list[float] | None = None

    @classmethod
    def for_share(cls, share: float, threshold: float) -> Calibration:
        if not 0 < share < 1 or not 0 < threshold < 1:
            raise ValueError("anomaly_alert_share and alert_threshold must be in (0, 1)")
        return cls(math.log(threshold) / math.log(1.0 - share))

    @property
    def learnt(self) -> int:
        """How many raw scores the histogram has learnt."""
        return self._learnt

    def _bin(self, raw: float) -> int:
        return min(len(self.counts) - 1, max(0, int(raw * len(self.counts))))

    def risk(self, raw: float) -> float:
        if self._cdf is None:
            total = self.counts.sum()
            if total <= 0:
                return 0.0
            below = np.cumsum(self.counts) - 0.5 * self.counts  # half of one's own bin
            self._cdf = (below / total).tolist()
        return float(self._cdf[self._bin(raw)] ** self.gamma)

    def learn(self, raw: float) -> None:
        self.risks_in_turn((raw,), 1, 0)  # learnt, not scored

    def risks_in_turn(self, raws: Sequence[float], risk_from: int, learn_from: int) -> list[float]:
        """`risk` of each raw score (0.0 before the `risk_from`-th), each followed by
        its `learn` from the `learn_from`-th on: a batch's scores in turn, in one
        loop, without two method calls per scored event that found its bin twice."""
        counts, bins, gamma = self.counts, len(self.counts), self.gamma
        risks: list[float] = []
        for i, raw in enumerate(raws):
            place = min(bins - 1, max(0, int(raw * bins)))  # `_bin`
            if i < risk_from:
                risks.append(0.0)
            elif self._cdf is not None:
                risks.append(self._cdf[place] ** gamma)
            else:
                risks.append(self.risk(raw))
            if i >= learn_from:
                counts[place] += self.increment
                self.increment *= self.growth
                self._learnt += 1
                if self._learnt % REFRESH_EVERY == 0 or self._learnt < REFRESH_EVERY:
                    self._cdf = None  # percentiles move slowly: every REFRESH_EVERY scores
                if self.increment > 1e12:
                    counts /= self.increment
                    self.increment = 1.0
                    self._cdf = None
        return risks


class Population:
    """Per feature over every scored event: min and max (for scaling), mean and variance.

    Updated a batch at a time (Chan et al.'s pairwise combination of means and
    sums of squared deviations), so the cost per event is one numpy row. Learning
    replaces the arrays and never writes into them (`copy` shares them).
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.n = 0
        self.low = np.full(len(names), np.inf)
        self.high = np.full(len(names), -np.inf)
        self.means = np.zeros(len(names))
        self.m2 = np.zeros(len(names))

    def learn(self, matrix: np.ndarray[Any, Any]) -> None:
        """Fold in a batch of rows (one per event, columns in `names` order)."""
        self._learn_moments(matrix)
        self.low = np.minimum(self.low, matrix.min(axis=0))
        self.high = np.maximum(self.high, matrix.max(axis=0))

    def scale_and_learn(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """`scale_in_turn` of the rows, then `learn` of them: the running range that
        scales the last row is the range after the batch, so it is not sought twice."""
        scaled, low, high = self._scaled_in_turn(matrix)
        self._learn_moments(matrix)
        self.low, self.high = low[-1].copy(), high[-1].copy()
        return scaled

    def _learn_moments(self, matrix: np.ndarray[Any, Any]) -> None:
        """`learn`'s count, means and sums of squared deviations."""
        count = len(matrix)
        batch_mean = matrix.sum(axis=0) / count  # `mean` to the bit, without its Python layer
        batch_m2 = ((matrix - batch_mean) ** 2).sum(axis=0)
        total = self.n + count
        delta = batch_mean - self.means
        self.m2 = self.m2 + batch_m2 + delta**2 * self.n * count / total
        self.means = self.means + delta * count / total
        self.n = total

    def scale_in_turn(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Rows min-max scaled as if learnt one at a time: each against the range of
        every row before it and itself, never a later one (so a score does not depend
        on how many events its batch held)."""
        return self._scaled_in_turn(matrix)[0]

    def _scaled_in_turn(
        self, matrix: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """`scale_in_turn`, with each row's range (low, high) that scaled it.

        A row lies within its own range, so its scaled values are in [0, 1]
        already (rounding is monotone): no clip. A feature that has not varied
        (no span) is left as the row minus its low, which is 0. (Only a -0.0
        against a low of 0.0 stays -0.0 where a clip made it 0.0; the trees
        compare it, and it compares the same.)
        """
        low = np.minimum.accumulate(matrix, axis=0)
        np.minimum(self.low, low, out=low)
        high = np.maximum.accumulate(matrix, axis=0)
        np.maximum(self.high, high, out=high)
        span = high - low
        scaled = matrix - low
        np.divide(scaled, span, out=scaled, where=span > 0)
        return scaled, low, high

    def scale(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Rows min-max scaled to [0, 1] (clipped), the range the trees split."""
        span = self.high - self.low
        safe = np.where(span > 0, span, 1.0)
        scaled: np.ndarray[Any, Any] = np.clip((matrix - self.low) / safe, 0.0, 1.0)
        scaled[:, span <= 0] = 0.0
        return scaled

    def copy(self) -> Population:
        """The statistics as they stand now, apart from what this one learns next.

        The arrays are shared, not copied: `learn` replaces them and never writes
        into them. Nor is `__init__` run again (a copy per batch: its four fresh
        arrays would be thrown away at once).
        """
        twin = Population.__new__(Population)
        twin.__dict__.update(self.__dict__)
        return twin

    def z(self, x: Mapping[str, float]) -> list[float]:
        """How many standard deviations each feature of `x` sits above the mean; 0 for a
        feature that has not varied (its spread, if any, is rounding: 1e-15 became a cap)."""
        values = np.array([[x.get(name, 0.0) for name in self.names]])
        return self.z_rows(values)[0].tolist()  # type: ignore[no-any-return]

    def z_rows(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """`z` of each row (one per event, columns in `names` order)."""
        n = np.float64(self.n)
        return _z_scores(matrix, n, means=self.means, m2=self.m2, low=self.low, high=self.high)

    def z_in_turn(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """`z` of each row as if the rows were learnt one at a time, before `learn` of
        them: each against the mean and spread of every row before it and itself, as
        `scale_in_turn` scales it, so an event's z does not depend on its batch.

        Running sums of the rows' offsets from the mean before them (from the first
        row, for a population that knows none) give every row's mean and sum of
        squared deviations in one step: sum((x - c)^2) - (sum(x - c))^2 / n.
        """
        counts = self.n + np.arange(1.0, len(matrix) + 1.0)[:, None]
        centre = self.means if self.n else matrix[0]
        offsets = matrix - centre
        sums = np.cumsum(offsets, axis=0)
        m2 = np.maximum(0.0, self.m2 + np.cumsum(offsets * offsets, axis=0) - sums * sums / counts)
        low = np.minimum(self.low, np.minimum.accumulate(matrix, axis=0))
        high = np.maximum(self.high, np.maximum.accumulate(matrix, axis=0))
        means = centre + sums / counts
        return _z_scores(matrix, counts, means=means, m2=m2, low=low, high=high)


def _z_scores(
    matrix: np.ndarray[Any, Any],
    counts: np.ndarray[Any, Any] | np.float64,
    *,
    means: np.ndarray[Any, Any],
    m2: np.ndarray[Any, Any],
    low: np.ndarray[Any, Any],
    high: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    """Each row's z-scores against the statistics of `counts` events (a row each, or one
    for all): 0 for a feature that has not varied, whose spread is rounding at most."""
    spread = np.where(counts > 1, np.sqrt(m2 / np.maximum(counts, 1.0)), 0.0)
    size = np.maximum(1.0, np.maximum(np.abs(high), np.abs(low)))
    varied = (spread > 0) & (high - low > FLAT * size)
    z: np.ndarray[Any, Any] = np.where(
        varied, (matrix - means) / np.where(varied, spread, 1.0), 0.0
    )
    return z


def explain(feature: str, x: Mapping[str, float]) -> str:
    """A reason in words a fraud analyst can act on."""
    value = x.get(feature, 0.0)
    count = round(value)
    words = {
        "amount_log": f"order amount {math.expm1(value):,.2f}",
        "amount_vs_usual": f"order is {2**value:.1f}x this user's usual amount",
        "first_order": "first order of this account",
        "orders_1m": f"{_counted(count, 'other order')} in the last minute",
        "orders_1h": f"{_counted(count, 'other order')} in the last hour",
        "events_1m": f"{_counted(count, 'event')} in the last minute",
        "events_1h": f"{_counted(count, 'event')} in the last hour",
        # New: not used on this account before today (TRUST_MS), never or only just now.
        "new_device": "device new to this account (first seen under a day ago)",
        "new_country": "country new to this account (first seen under a day ago)",
        "new_card": "card new to this account (first used under a day ago)",
        "cards_24h": f"{_counted(count, 'different card')} in 24 h",
        "failed_logins_1h": f"{_counted(count, 'failed login')} in the last hour",
        "account_age_days": f"account {math.expm1(value):.2f} days old",
        "since_login_hours": f"{math.expm1(value):.1f} h since the last successful login",
        "cart_to_purchase_min": f"{math.expm1(value):.0f} min from cart to purchase",
        "is_login": "a login",
        "login_failed": "failed login",
        ANOMALY: f"unlike this shop's usual traffic (anomaly score {value:.2f})",
    }
    return words.get(feature, feature)


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
