"""River's HalfSpaceTrees, scored and learnt a batch of events at a time.

River walks every tree once per event to score it and once more to learn it,
in Python: about 12 µs per scored event here, once the largest single cost of
the risk stage. Within one window of `window_size` events the scores read
only the reference masses (`r_mass`), which change at the window's end, and
an event's path through a tree depends only on its features (rows here carry
every feature; River's way round a missing one reads the masses). So a batch can be
cut at the window ends, every event's path through every tree found at once
with numpy, the scores summed from the reference masses along the paths, and
the paths' latest-window masses (`l_mass`) counted up afterwards. That is
River's algorithm exactly, not an approximation: the masses are integers and
the scores come out equal to the bit (a test runs River's own `score_one` /
`learn_one` beside this).

River still builds the trees (its first `learn_one`, with its seeded random
splits), and a `HalfSpaceTrees` object stays the model's stored form:
`write_back` copies the masses into its nodes before a snapshot, and the
arrays are built again from it after a restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from river import anomaly

FloatMatrix = np.ndarray[Any, np.dtype[np.float64]]


class FlatHalfSpaceTrees:
    """The nodes of a built `HalfSpaceTrees` as arrays; every tree's nodes in River's DFS order."""

    def __init__(self, trees: anomaly.HalfSpaceTrees, names: Sequence[str]) -> None:
        if not trees.trees:
            raise ValueError("the trees are built by River's first learn_one")
        column = {name: i for i, name in enumerate(names)}
        self.height = trees.height
        self.window_size = trees.window_size
        self.size_limit = 0.1 * trees.window_size
        self.max_score = trees._max_score
        self.counter = trees.counter
        self.first_window = trees._first_window
        self._trees = trees
        self._nodes = [node for tree in trees.trees for node in tree.iter_dfs()]  # type: ignore[no-untyped-call]
        index = {id(node): i for i, node in enumerate(self._nodes)}
        self.roots = np.array([index[id(tree)] for tree in trees.trees])
        feature, threshold, left, right = [], [], [], []
        for i, node in enumerate(self._nodes):
            if hasattr(node, "feature"):  # a branch
                if node.feature not in column:
                    raise ValueError(f"the trees split on {node.feature!r}, not a known feature")
                feature.append(column[node.feature])
                threshold.append(node.threshold)
                left.append(index[id(node.children[0])])
                right.append(index[id(node.children[1])])
            else:  # a leaf (all at depth `height`) points at itself
                feature.append(0)
                threshold.append(0.0)
                left.append(i)
                right.append(i)
        self.feature, self.threshold = np.array(feature), np.array(threshold)
        self.left, self.right = np.array(left), np.array(right)
        self.r_mass = np.array([node.r_mass for node in self._nodes], dtype=np.int64)
        self.l_mass = np.array([node.l_mass for node in self._nodes], dtype=np.int64)
        self._weights = 2 ** np.arange(self.height + 1, dtype=np.int64)  # 2**depth

    def paths(self, rows: FloatMatrix) -> np.ndarray[Any, np.dtype[np.intp]]:
        """Node index at each depth of each tree for each row: shape (rows, trees, height + 1)."""
        count = len(rows)
        at = np.broadcast_to(self.roots, (count, len(self.roots))).copy()
        out = np.empty((count, len(self.roots), self.height + 1), dtype=np.intp)
        line = np.arange(count)[:, None]
        for depth in range(self.height):
            out[:, :, depth] = at
            goes_left = rows[line, self.feature[at]] < self.threshold[at]
            at = np.where(goes_left, self.left[at], self.right[at])
        out[:, :, self.height] = at
        return out

    def score_learn(self, rows: FloatMatrix, *, learn: bool = True) -> list[float]:
        """River's `score_one` of each row, then (by default) its `learn_one`, in order."""
        scores: list[float] = []
        if not len(rows):
            return scores
        paths = self.paths(rows)
        start = 0
        while start < len(rows):
            # Up to the end of the current window the reference masses stay as they are.
            end = len(rows)
            if learn:
                end = min(end, start + self.window_size - self.counter)
            chunk = paths[start:end]
            if self.first_window:
                scores.extend([0.0] * len(chunk))
            else:
                scores.extend(self._scores(chunk))
            if learn:
                self.l_mass += np.bincount(chunk.ravel(), minlength=len(self.l_mass))
                self.counter += len(chunk)
                if self.counter == self.window_size:
                    self.r_mass, self.l_mass = self.l_mass, np.zeros_like(self.l_mass)
                    self.first_window = False
                    self.counter = 0
            start = end
        return scores

    def _scores(self, paths: np.ndarray[Any, np.dtype[np.intp]]) -> list[float]:
        mass = self.r_mass[paths]  # (rows, trees, depth)
        # River stops a walk after the first node whose mass is under the size limit
        # (that node still counts): a node counts while every node above it is not.
        full = mass >= self.size_limit
        counts = np.ones_like(full)
        np.cumprod(full[:, :, :-1], axis=2, out=counts[:, :, 1:])
        total = (mass * counts * self._weights).sum(axis=(1, 2))
        scores: list[float] = (1.0 - total / self.max_score).tolist()
        return scores

    def write_back(self) -> None:
        """Copy the masses and window position into the River model's nodes (before a snapshot)."""
        for node, r_mass, l_mass in zip(
            self._nodes, self.r_mass.tolist(), self.l_mass.tolist(), strict=True
        ):
            node.r_mass, node.l_mass = r_mass, l_mass
        self._trees.counter, self._trees._first_window = self.counter, self.first_window
