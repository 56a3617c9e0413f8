"""HalfSpaceTrees a batch at a time give River's own scores, event by event, to the bit."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import anomaly

from profiling.behaviour import TRANSACTION_FEATURES
from profiling.hst import FlatHalfSpaceTrees
from profiling.risk import RiskModel

NAMES = TRANSACTION_FEATURES
WINDOW = 50


def rows(count: int, seed: int) -> np.ndarray:
    """Scaled features as the risk model feeds them: [0, 1], many exact zeros, some skew."""
    rng = np.random.default_rng(seed)
    out = rng.random((count, len(NAMES)))
    out[rng.random(out.shape) < 0.3] = 0.0
    out[::9] **= 6
    return out


def river_scores(matrix: np.ndarray, trees: anomaly.HalfSpaceTrees) -> list[float]:
    scores = []
    for x in (dict(zip(NAMES, r, strict=True)) for r in matrix.tolist()):
        scores.append(float(trees.score_one(x)))
        trees.learn_one(x)
    return scores


def new_trees() -> anomaly.HalfSpaceTrees:
    return anomaly.HalfSpaceTrees(n_trees=3, height=6, window_size=WINDOW, seed=7)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3 * WINDOW), min_size=1, max_size=12),
    seed=st.integers(0, 10_000),
)
def test_any_batch_split_scores_as_river_does(sizes: list[int], seed: int) -> None:
    matrix = rows(1 + sum(sizes), seed)
    want = river_scores(matrix, new_trees())
    trees = new_trees()
    got = river_scores(matrix[:1], trees)  # River builds the trees from the first event
    flat = FlatHalfSpaceTrees(trees, NAMES)
    start = 1
    for size in sizes:
        got += flat.score_learn(matrix[start : start + size])
        start += size
    assert got == want


def test_written_back_masses_carry_on_in_river() -> None:
    matrix = rows(4 * WINDOW + 17, seed=3)
    reference = new_trees()
    river_scores(matrix[: 3 * WINDOW + 5], reference)
    trees = new_trees()
    river_scores(matrix[:1], trees)
    flat = FlatHalfSpaceTrees(trees, NAMES)
    flat.score_learn(matrix[1 : 3 * WINDOW + 5])
    flat.write_back()
    assert (trees.counter, trees._first_window) == (reference.counter, reference._first_window)
    rest = matrix[3 * WINDOW + 5 :]
    assert river_scores(rest, trees) == river_scores(rest, reference)


def test_scoring_without_learning_leaves_the_masses() -> None:
    matrix = rows(3 * WINDOW, seed=4)
    trees = new_trees()
    river_scores(matrix[:1], trees)
    flat = FlatHalfSpaceTrees(trees, NAMES)
    flat.score_learn(matrix[1 : 2 * WINDOW + 3])
    probe = matrix[2 * WINDOW + 3 :]
    first = flat.score_learn(probe, learn=False)
    assert flat.score_learn(probe, learn=False) == first
    reference = new_trees()
    river_scores(matrix[: 2 * WINDOW + 3], reference)
    assert first == [
        float(reference.score_one(dict(zip(NAMES, r, strict=True)))) for r in probe.tolist()
    ]


def test_trees_over_other_features_are_refused() -> None:
    trees = new_trees()
    trees.learn_one({"something_else": 0.5})
    with pytest.raises(ValueError, match="something_else"):
        FlatHalfSpaceTrees(trees, NAMES)


def test_a_pickled_risk_model_scores_on_as_the_original() -> None:
    """Snapshots carry River's trees; a restored model goes on exactly where it left off."""
    rng = np.random.default_rng(11)
    events = [
        {name: float(v) for name, v in zip(NAMES, rng.gamma(1.0, 2.0, len(NAMES)), strict=True)}
        for _ in range(900)
    ]
    model = RiskModel(window_size=WINDOW)
    model.score_batch(events[:333])
    restored = pickle.loads(pickle.dumps(model))
    assert restored.score_batch(events[333:]) == model.score_batch(events[333:])
