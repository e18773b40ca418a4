"""Exact top-k by inner product on the CPU: the truth each build's recall measure compares
its structure with (`calibrate.py`).

`faiss.knn` keeps a heap per query, and in the generic build this faiss wheel loads the
heaps, not the inner products, take the time: 7.5-7.8 s for 1,000 queries over 1M 64-d
vectors on 2 cores. Here each block of queries meets each block of the base in one BLAS
matmul; every query keeps its k best so far, and a block contributes only the scores above
its k-th best (one comparison and `np.nonzero`), merged into the k best once they pile up.
The same neighbours in 3.3 s (100 queries: 0.35 s against 0.76), numpy only: the index
never loads torch (the serving process stays torch-free).

Example: k=2, a query's best so far (0.9 at 7, 0.8 at 3): of the next block's scores only
those above 0.8 wait, and a waiting 0.85 at 20 makes the best (0.9 at 7, 0.85 at 20).
"""

from __future__ import annotations

import numpy as np

QUERY_BLOCK, BASE_BLOCK = 128, 16384  # a block's scores: 8 MiB


def exact_knn(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Positions (S, k) of the k largest inner products of each query (S, D) float32 with
    base (N, D) float32, best first; 1 <= k <= N."""
    out = np.empty((len(queries), k), np.int64)
    for q0 in range(0, len(queries), QUERY_BLOCK):
        q = queries[q0 : q0 + QUERY_BLOCK]
        top = _Top(len(q), k)
        for b0 in range(0, len(base), BASE_BLOCK):
            top.offer(q @ base[b0 : b0 + BASE_BLOCK].T, b0)
        out[q0 : q0 + len(q)] = top.positions()
    return out


class _Top:
    """The k best (score, position) of each of m queries, best first, and the candidates
    above each one's k-th best that wait to be merged into them."""

    def __init__(self, m: int, k: int) -> None:
        self.m, self.k = m, k
        self.scores = np.full((m, k), -np.inf, np.float32)
        self.at = np.full((m, k), -1, np.int64)
        self._rows: list[np.ndarray] = []
        self._at: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._waiting = 0

    def offer(self, scores: np.ndarray, offset: int) -> None:
        """A block's scores (m, b) of base positions offset .. offset + b - 1."""
        kth = self.scores[:, -1]  # (m,)
        if np.isinf(kth).any():  # fewer than k seen: the block's k best of each query
            kk = min(self.k, scores.shape[1])
            best = np.argpartition(scores, -kk, axis=1)[:, -kk:]  # (m, kk)
            rows = np.repeat(np.arange(self.m), kk)
            self._wait(rows, best.ravel() + offset, np.take_along_axis(scores, best, 1).ravel())
            self._merge()
            return
        rows, cols = np.nonzero(scores > kth[:, None])
        if len(rows):
            self._wait(rows, cols + offset, scores[rows, cols])
            if self._waiting > 4 * self.k * self.m:
                self._merge()

    def positions(self) -> np.ndarray:
        """(m, k) positions, best first."""
        self._merge()
        return self.at

    def _wait(self, rows: np.ndarray, at: np.ndarray, scores: np.ndarray) -> None:
        self._rows.append(rows)
        self._at.append(at)
        self._scores.append(scores)
        self._waiting += len(rows)

    def _merge(self) -> None:
        if not self._rows:
            return
        m, k = self.m, self.k
        rows = np.concatenate([np.repeat(np.arange(m), k), *self._rows])
        at = np.concatenate([self.at.ravel(), *self._at])
        scores = np.concatenate([self.scores.ravel(), *self._scores])
        order = np.lexsort((-scores, rows))  # by query, then best first
        rows, at, scores = rows[order], at[order], scores[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # place within its query
        keep = rank < k
        self.scores[rows[keep], rank[keep]] = scores[keep]
        self.at[rows[keep], rank[keep]] = at[keep]
        self._rows, self._at, self._scores, self._waiting = [], [], [], 0
