"""Live customer segments: River's online k-means over standardised profile features.

Every updated profile is assigned to the nearest centre. Assignment is
vectorised per batch (numpy, over the centres River holds); learning goes
through River (`StandardScaler` then `KMeans.learn_one`, about 20 µs) for
every `learn_every`-th update (32): a sample of the shop's profiles, plenty
for eight centres to follow it, at under a microsecond per update. At one
event per user and batch (a worker keeping up with a steady stream) every
event is an update; learning from one in eight cost a tenth of the batch.

A user's segment does not flap: they move only when the new centre is nearer
than `switch_margin` times the distance to their current one, and only after
`min_dwell` updates in the current segment. A move is a significant change
(published with `prev_segment`).

`describe` turns a segment into plain words ("frequent, high spend, mostly
electronics"): the mean of its assigned users' features, in standard
deviations from the shop's mean (recent updates weigh more), and the
segment's most common top category, counted as users are assigned: named
when it is most of the segment's ("mostly") or stands out against the whole
shop ("often").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache, partial
from typing import Any, Final, NamedTuple

import numpy as np
from river import cluster, preprocessing

from profiling.behaviour import PROFILE_FEATURES, float_rows

# The profile features `profile_row` computes, in its order: a column of the matrix each.
SEGMENT_FEATURES: Final = PROFILE_FEATURES

# (feature, words when the centre is above the mean, words when below), strongest first.
WORDS: Final = (
    ("frequency", "frequent", "occasional"),
    ("monetary", "high spend", "low spend"),
    ("orders", "many orders", "few orders"),
    ("avg_price", "premium items", "budget items"),
    ("recency_gap_days", "returning after a break", None),
    ("share_search", "search-led", None),
    ("share_add_to_cart", "cart builders", None),
    ("share_review", "reviewers", None),
    ("category_focus", "focused on few categories", "broad interests"),
)
MAX_CATEGORIES: Final = 32  # top categories counted per segment, for its description
MEMBER_MEMORY: Final = 20_000  # updates per segment before its member sums are halved
MOSTLY: Final = 0.5  # "mostly X": X is the top category of this share of a segment's updates
STANDS_OUT: Final = 1.5  # "often X": X this many times as common as in the whole shop
OFTEN_AT_LEAST: Final = 0.1  # ... and at least this share of the segment's updates
WORD_THRESHOLD: Final = 0.5  # standard deviations from the mean before a word applies


class Assignment(NamedTuple):
    segment: int
    since: int  # updates spent in this segment (the dwell counter)
    moved_from: int | None  # the previous segment when this update moved the user


# Assignment(...) with every field, without the named tuple's Python-level __new__
# (once per profile and batch).
_assignment: Final = partial(tuple.__new__, Assignment)


@lru_cache(maxsize=4)
def _flat_places(segments: int, features: int) -> np.ndarray[Any, Any]:
    """Where each (segment, feature) of the member sums lies in them, flattened."""
    return np.arange(segments * features).reshape(segments, features)


class SegmentModel:
    """Online k-means segments with hysteresis."""

    def __init__(
        self,
        *,
        n_segments: int = 8,
        seed: int = 42,
        halflife: float = 0.05,
        switch_margin: float = 0.8,
        min_dwell: int = 3,
        learn_every: int = 32,
    ) -> None:
        if n_segments < 2 or learn_every < 1 or min_dwell < 0 or not 0 < switch_margin <= 1:
            raise ValueError(
                "n_segments >= 2, learn_every >= 1, min_dwell >= 0, 0 < switch_margin <= 1"
            )
        self.scaler = preprocessing.StandardScaler()
        self.kmeans = cluster.KMeans(n_clusters=n_segments, halflife=halflife, sigma=1.0, seed=seed)
        # River draws a centre's random start lazily, feature by feature, in the order a
        # set of feature names iterates: string hashing's, which changes with every
        # process. Drawn here in a fixed order, the same seed gives the same centres.
        for centre in self.kmeans.centers.values():
            for name in SEGMENT_FEATURES:
                centre[name]  # the defaultdict draws it
        self.n_segments = n_segments
        self.switch_margin = switch_margin
        self.min_dwell = min_dwell
        self.learn_every = learn_every
        self.updates = 0
        self.seeded = 0  # centres placed on real profiles so far (then k-means moves them)
        self.top_categories: dict[int, Counter[str]] = {}
        # What each segment's users look like (standardised features, summed over the
        # updates assigned to it; halved now and then, so recent ones weigh more).
        self.member_sums = np.zeros((n_segments, len(SEGMENT_FEATURES)))
        self.member_counts = np.zeros(n_segments)

    def assign(
        self,
        features: Sequence[Mapping[str, float]],
        current: Sequence[tuple[int | None, int]],
        categories: Sequence[str | None],
        *,
        learn: bool = True,
    ) -> list[Assignment]:
        """A segment for each profile, given each one's (segment, dwell) so far.

        `learn=False` (a batch assigned again, whose updates were counted once):
        neither the centres nor what describes a segment learn from it.
        """
        rows = [tuple([f.get(name, 0.0) for name in SEGMENT_FEATURES]) for f in features]
        return self.assign_rows(rows, current, categories, learn=learn)

    def assign_rows(
        self,
        rows: Sequence[tuple[float, ...]],
        current: Sequence[tuple[int | None, int]],
        categories: Sequence[str | None],
        *,
        learn: bool = True,
    ) -> list[Assignment]:
        """`assign` of the profiles' features as rows in SEGMENT_FEATURES order
        (`profiling.behaviour.profile_row`): no dict per profile."""
        if not rows:
            return []
        matrix = float_rows(rows, len(SEGMENT_FEATURES))
        if learn:
            self._learn(rows)
        means, spread, centres = self._frame()
        standardised = (matrix - means) / spread
        diff = standardised[:, None, :] - centres[None, :, :]
        distances = np.sqrt((diff * diff).sum(axis=2))
        nearest = distances.argmin(axis=1).tolist()
        out = []
        n_segments, min_dwell, margin = self.n_segments, self.min_dwell, self.switch_margin
        for row, best, (segment, dwell), category in zip(
            distances.tolist(), nearest, current, categories, strict=True
        ):
            # Hysteresis, inline (once per profile): a user without a segment (or one of
            # a model with more) takes the nearest; one who has dwelt `min_dwell`
            # updates moves when the nearest centre is within the switch margin.
            if segment is None or not 0 <= segment < n_segments:
                assigned = _assignment((best, 1, None))
            elif best != segment and dwell >= min_dwell and row[best] < margin * row[segment]:
                assigned = _assignment((best, 1, segment))
            else:
                assigned = _assignment((segment, dwell + 1, None))
            if category and learn:  # inline, not a method: once per profile
                counter = self.top_categories.get(assigned.segment)
                if counter is None:  # not setdefault: that builds a Counter every time
                    counter = self.top_categories[assigned.segment] = Counter()
                counter[category] += 1
                if len(counter) > 2 * MAX_CATEGORIES:  # bounded: keep the strongest
                    self.top_categories[assigned.segment] = Counter(
                        dict(counter.most_common(MAX_CATEGORIES))
                    )
            out.append(assigned)
        if learn:
            self._remember_members(standardised, [a.segment for a in out])
        return out

    def _remember_members(self, standardised: np.ndarray[Any, Any], segments: list[int]) -> None:
        sums = getattr(self, "member_sums", None)  # snapshots from before it lack it
        if sums is None:
            sums = self.member_sums = np.zeros((self.n_segments, len(SEGMENT_FEATURES)))
            self.member_counts = np.zeros(self.n_segments)
        rows = np.array(segments)
        # Each row added to its segment's sums in turn, as `np.add.at(sums, rows,
        # standardised)` adds it (the same sums to the bit), but value by value in the
        # flat sums (a view: `np.zeros` made them C-ordered): add.at steps row by row
        # over a 2-D operand, at about 2,700 instructions a row.
        places = _flat_places(*sums.shape)[rows]
        np.add.at(sums.reshape(-1), places.reshape(-1), standardised.reshape(-1))
        np.add.at(self.member_counts, rows, 1.0)
        full = self.member_counts > MEMBER_MEMORY
        if full.any():
            sums[full] /= 2
            self.member_counts[full] /= 2

    def _learn(self, rows: Sequence[tuple[float, ...]]) -> None:
        for row in rows:
            self.updates += 1
            if self.updates % self.learn_every:
                continue
            x = dict(zip(SEGMENT_FEATURES, row, strict=True))
            self.scaler.learn_one(x)
            scaled = self.scaler.transform_one(x)
            if self.seeded < self.n_segments and self._distinct(scaled):
                # River starts centres at random points, where a centre far from every
                # profile never wins one; the first distinct profiles seed them instead.
                self.kmeans.centers[self.seeded].update(scaled)
                self.seeded += 1
            else:
                self.kmeans.learn_one(scaled)

    def _distinct(self, scaled: Mapping[str, float]) -> bool:
        point = np.array([scaled.get(name, 0.0) for name in SEGMENT_FEATURES])
        seeds = self.centres()[: self.seeded]
        return not len(seeds) or bool(np.min(np.linalg.norm(seeds - point, axis=1)) > 0.5)

    def _frame(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The scaler's means and spreads and the centres, as arrays; they move only in `_learn`.

        Kept until the next learning step (a batch of one-event users reads them
        for every few dozen profiles).
        """
        key = (self.updates // self.learn_every, self.seeded)
        cached = getattr(self, "_framed", None)  # snapshots from before it lack it
        if cached is None or cached[0] != key:
            means = np.array([self.scaler.means.get(n, 0.0) for n in SEGMENT_FEATURES])
            variances = np.array([self.scaler.vars.get(n, 0.0) for n in SEGMENT_FEATURES])
            spread = np.sqrt(variances)
            spread[spread == 0] = 1.0
            cached = self._framed = (key, (means, spread, self.centres()))
        return cached[1]

    def centres(self) -> np.ndarray[Any, Any]:
        """(n_segments, features) centre coordinates in standard deviations."""
        return np.array(
            [
                [self.kmeans.centers[k].get(name, 0.0) for name in SEGMENT_FEATURES]
                for k in range(self.n_segments)
            ]
        )

    def describe(self, segment: int) -> str:
        """Plain words for what a segment's users look like, e.g. "frequent, high spend,
        mostly electronics": the mean of their standardised features, not the centre
        (a centre seeded from the first few profiles, or never moved, says little of them)."""
        counts = getattr(self, "member_counts", None)
        if counts is None:  # a snapshot from before the members were kept
            looks = self.centres()[segment]
        elif counts[segment] > 0:
            looks = self.member_sums[segment] / counts[segment]
        else:
            return "no users yet"
        centre = dict(zip(SEGMENT_FEATURES, looks, strict=True))
        words = []
        for feature, high, low in WORDS:
            value = centre[feature]
            if value >= WORD_THRESHOLD and high:
                words.append(high)
            elif value <= -WORD_THRESHOLD and low:
                words.append(low)
        category = self._category_words(segment)
        if category:
            words.append(category)
        return ", ".join(words) or "average shoppers"

    def _category_words(self, segment: int) -> str | None:
        """ "mostly X" when X is the top category of most of the segment; "often X" when X
        is much more common here than in the whole shop; else nothing. The shop's most
        popular category is the commonest in most segments, and says nothing of them."""
        counts = self.top_categories.get(segment)
        if not counts:
            return None
        total = counts.total()
        ranked = counts.most_common()
        name, count = ranked[0]
        if count >= MOSTLY * total:
            return f"mostly {name}"
        shop = sum(c.total() for c in self.top_categories.values())
        for name, count in ranked:
            share = count / total
            if share < OFTEN_AT_LEAST:
                break
            in_shop = sum(c.get(name, 0) for c in self.top_categories.values()) / shop
            if share >= STANDS_OUT * in_shop:
                return f"often {name}"
        return None
