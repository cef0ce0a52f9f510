"""Objects labelled block by block, joined across block borders into whole objects (4-connectivity).

Each block reports its local objects (labels 1..n, one entry of ``"n"`` per object) and the label rows of
its four borders (``"top"``, ``"bottom"``, ``"left"``, ``"right"``); only these small tables reach the client.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def join_across_borders(blocks: np.ndarray,
                        may_join: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The whole-object id (root) of every local object of a grid ``blocks`` of block tables, row-major.

    Objects of neighbouring blocks that touch across the border are joined; ``may_join(a, b)`` (global ids
    of touching objects) keeps only the pairs that may join, e.g. objects of one class.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    sizes = np.array([[len(b["n"]) for b in row] for row in blocks], dtype=np.int64).reshape(blocks.shape)
    offsets = np.concatenate([[0], np.cumsum(sizes.ravel())])[:-1].reshape(sizes.shape)
    total = int(sizes.sum())
    pairs = []

    def link(a: np.ndarray, off_a: int, b: np.ndarray, off_b: int) -> None:
        both = (a > 0) & (b > 0)
        ga, gb = a[both] - 1 + off_a, b[both] - 1 + off_b
        if may_join is not None:
            keep = may_join(ga, gb)
            ga, gb = ga[keep], gb[keep]
        if len(ga):
            pairs.append(np.column_stack([ga, gb]))

    n_i, n_j = blocks.shape
    for i in range(n_i):
        for j in range(n_j):
            if i + 1 < n_i:
                link(blocks[i, j]["bottom"], offsets[i, j], blocks[i + 1, j]["top"], offsets[i + 1, j])
            if j + 1 < n_j:
                link(blocks[i, j]["right"], offsets[i, j], blocks[i, j + 1]["left"], offsets[i, j + 1])
    if not pairs:
        return np.arange(total)
    edges = np.concatenate(pairs)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(total, total))
    return connected_components(graph, directed=False)[1]
