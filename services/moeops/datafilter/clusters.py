"""Which documents level 1 removes, and why: union-find over the candidate pairs.

Exact pairs are joined first: in each exact cluster (same normalised text) every document but the first is
removed as `exact`, a duplicate of that first one. Then the near pairs join exact clusters into near clusters:
the first document of an exact cluster that is not the first of its near cluster is removed as `near`, a
near duplicate of the near cluster's first document. The first of each near cluster survives: the lowest doc
id, i.e. the earliest in reading order. Every removal carries its reason and the document it duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

EXACT = 1
NEAR = 2
REASONS = {EXACT: "exact", NEAR: "near"}


class UnionFind:
    """Disjoint sets over arbitrary integer ids; the root of a set is always its smallest id."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        parent = self.parent
        if item not in parent:
            return item
        root = item
        while parent.get(root, root) != root:
            root = parent[root]
        while item != root:  # path compression
            parent[item], item = root, parent[item]
        return root

    def union(self, a: int, b: int) -> int:
        root_a, root_b = self.find(a), self.find(b)
        low, high = min(root_a, root_b), max(root_a, root_b)
        self.parent.setdefault(low, low)
        self.parent[high] = low
        return low

    def members(self) -> list[int]:
        """Every id ever joined to another."""
        return list(self.parent)


@dataclass(frozen=True)
class Removal:
    doc: int
    reason: int
    duplicate_of: int


def unique_pairs(pairs: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The distinct unordered pairs, each as (low, high), self-pairs dropped (the bands repeat a near pair)."""
    if len(pairs) == 0:
        return pairs.reshape(0, 2)
    ordered = np.sort(pairs, axis=1)
    ordered = ordered[ordered[:, 0] != ordered[:, 1]]
    return np.unique(ordered, axis=0)


def removals(exact_pairs: NDArray[np.uint64], near_pairs: NDArray[np.uint64]) -> list[Removal]:
    """The documents to remove, sorted by doc id (see the module docstring)."""
    exact = UnionFind()
    for a, b in unique_pairs(exact_pairs).tolist():
        exact.union(a, b)
    removed: dict[int, Removal] = {}
    for doc in exact.members():
        root = exact.find(doc)
        if doc != root:
            removed[doc] = Removal(doc, EXACT, root)
    near = UnionFind()
    for a, b in unique_pairs(near_pairs).tolist():
        # Clusters join through the exact clusters' first documents, so an exact twin links its cluster too.
        near.union(exact.find(a), exact.find(b))
    for doc in near.members():
        root = near.find(doc)
        if doc != root and doc not in removed:
            removed[doc] = Removal(doc, NEAR, root)
    return [removed[doc] for doc in sorted(removed)]
