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
        depth = [0] * len(self._nodes)  # a node's parent comes before it in DFS order
        levels: list[tuple[list[int], list[int]]] = [([], []) for _ in range(self.height)]
        for i, node in enumerate(self._nodes):
            if hasattr(node, "feature"):  # a branch
                if node.feature not in column:
                    raise ValueError(f"the trees split on {node.feature!r}, not a known feature")
                feature.append(column[node.feature])
                threshold.append(node.threshold)
                left.append(index[id(node.children[0])])
                right.append(index[id(node.children[1])])
                for child in left[-1], right[-1]:
                    depth[child] = depth[i] + 1
                    levels[depth[i]][0].append(child)
                    levels[depth[i]][1].append(i)
            else:  # a leaf (all at depth `height`) points at itself
                feature.append(0)
                threshold.append(0.0)
                left.append(i)
                right.append(i)
        self.feature, self.threshold = np.array(feature), np.array(threshold)
        self.left, self.right = np.array(left), np.array(right)
        self.r_mass = np.array([node.r_mass for node in self._nodes], dtype=np.int64)
        self.l_mass = np.array([node.l_mass for node in self._nodes], dtype=np.int64)
        self._weights = 2 ** np.array(depth, dtype=np.int64)  # each node's 2**depth
        # (children, their parents) at each depth from 1 down, for `_count_masses`
        self._levels = [(np.array(nodes), np.array(parents)) for nodes, parents in levels]
        self._counted = self._count_masses()

    def paths(self, rows: FloatMatrix) -> np.ndarray[Any, np.dtype[np.intp]]:
        """Node index at each depth of each tree for each row: shape (height + 1, rows, trees).

        A step costs a few numpy calls whatever the batch's size, which is what
        weighs at a steady stream's small batches: each row's values are read by
        one `take` of its place in the flat rows (`starts`) plus the feature, not
        by (row, feature) pairs, and each depth's nodes are written in place.
        """
        count, trees = len(rows), len(self.roots)
        out = np.empty((self.height + 1, count, trees), dtype=np.intp)
        out[0] = self.roots
        flat = rows.ravel()
        # Where each row starts in `flat`, once per tree: its feature f is flat[start + f].
        starts = np.empty((count, trees), dtype=np.intp)
        starts.T[:] = np.arange(0, flat.size, rows.shape[1])
        for depth in range(self.height):
            at = out[depth]
            goes_left = flat[starts + self.feature[at]] < self.threshold[at]
            out[depth + 1] = np.where(goes_left, self.left[at], self.right[at])
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
            chunk = paths[:, start:end]
            if self.first_window:
                scores.extend([0.0] * (end - start))
            else:
                scores.extend(self._scores(chunk))
            if learn:
                self.l_mass += np.bincount(chunk.ravel(), minlength=len(self.l_mass))
                self.counter += end - start
                if self.counter == self.window_size:
                    self.r_mass, self.l_mass = self.l_mass, np.zeros_like(self.l_mass)
                    self._counted = self._count_masses()
                    self.first_window = False
                    self.counter = 0
            start = end
        return scores

    def _count_masses(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Each node's term in the score of a walk through it, from the reference masses:
        its mass times 2**depth, or 0 below where River stops the walk (after the first
        node whose mass is under the size limit; that node still counts). They change
        only at a window's end; a score is then the sum of its path's terms."""
        goes_on = self.r_mass >= self.size_limit
        reached = np.ones(len(self.r_mass), dtype=bool)
        for nodes, parents in self._levels:  # a level after its parents'
            reached[nodes] = reached[parents] & goes_on[parents]
        counted: np.ndarray[Any, np.dtype[np.int64]] = np.where(
            reached, self.r_mass * self._weights, 0
        )
        return counted

    def _scores(self, paths: np.ndarray[Any, np.dtype[np.intp]]) -> list[float]:
        total = self._counted[paths].sum(axis=(0, 2))  # over depths and trees
        scores: list[float] = (1.0 - total / self.max_score).tolist()
        return scores

    def write_back(self) -> None:
        """Copy the masses and window position into the River model's nodes (before a snapshot)."""
        for node, r_mass, l_mass in zip(
            self._nodes, self.r_mass.tolist(), self.l_mass.tolist(), strict=True
        ):
            node.r_mass, node.l_mass = r_mass, l_mass
        self._trees.counter, self._trees._first_window = self.counter, self.first_window
