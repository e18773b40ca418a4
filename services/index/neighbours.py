"""Search results as arrays, and the exact re-scoring of approximate ones.

`LookalikeIndex.search_arrays` returns `Neighbours`: one row a query, user ids as UTF-8
bytes in a fixed-width array and cosines as float32. The id mapping is one gather from the
index's contiguous id table for the whole batch, and no Python object is made per hit.
Making them costs more than the search (a str object per hit, each a cache miss to read or
create): at k=50 over 2,000 queries ~20 ms for the gather from an object array alone and
~110 ms for the (user, score) tuples that `search()` returns, against ~60 ms for the faiss
search. Hot callers read the arrays.

Example, two queries with k=3, the second with two hits:
    ids    = [[b"u7", b"u2", b"u9"], [b"u4", b"u1", b""]]
    scores = [[0.98, 0.91, 0.90], [0.88, 0.80, -3.4e38]]
    lists() -> [[("u7", 0.98), ("u2", 0.91), ("u9", 0.90)], [("u4", 0.88), ("u1", 0.80)]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

EMPTY_SCORE = float(np.finfo(np.float32).min)  # faiss's fill past the last hit


class Neighbours(NamedTuple):
    """Row i holds query i's hits, best first; a row with fewer than k hits ends in empty
    slots (id b"", score `EMPTY_SCORE`).

    Args:
        ids: (Q, k) user ids, UTF-8, numpy bytes dtype (`ids[i, j].decode()` is the id).
        scores: (Q, k) float32 cosines.
    """

    ids: np.ndarray
    scores: np.ndarray

    def lists(self) -> list[list[tuple[str, float]]]:
        """Q lists of (user_id, cosine) pairs, highest first, empty slots dropped."""
        dec = bytes.decode
        users = [[dec(u) if u else None for u in row] for row in self.ids.tolist()]
        return hit_lists(users, self.scores)


def hit_lists(users: list[list[str | None]], scores: np.ndarray) -> list[list[tuple[str, float]]]:
    """Rows of users (None in empty slots, which end each row) and scores (Q, k) -> Q lists
    of (user, score)."""
    out = []
    for row, row_scores in zip(users, scores.tolist(), strict=True):
        if row and row[-1] is None:
            n = row.index(None)
            row, row_scores = row[:n], row_scores[:n]
        out.append(list(zip(row, row_scores, strict=True)))
    return out  # type: ignore[return-value]  # the None slots were cut off


def rerank(
    queries: np.ndarray,
    found: np.ndarray,
    gather: Callable[[np.ndarray], np.ndarray],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates found (Q, F) rows (-1: none) -> the best k by exact inner product with
    queries (Q, D), vectors read by `gather`: scores (Q, k) float32, rows (Q, k)."""
    q, f = found.shape
    vecs = gather(np.where(found >= 0, found, 0).ravel()).reshape(q, f, -1)  # (Q, F, D)
    exact = np.einsum("qfd,qd->qf", vecs, queries).astype(np.float32)  # (Q, F)
    exact[found < 0] = EMPTY_SCORE
    if f < k:  # fewer candidates than wanted: pad as faiss does
        exact = np.pad(exact, ((0, 0), (0, k - f)), constant_values=EMPTY_SCORE)
        found = np.pad(found, ((0, 0), (0, k - f)), constant_values=-1)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(exact, order, 1), np.take_along_axis(found, order, 1)
