"""The search of the lookalike index when hits must be dropped or re-scored.

Hits are dropped for excluded users (a seed audience), hidden entries (replaced or deleted
vectors a structure could not remove), and scores under `min_score`; IVF-PQ hits are
re-scored exactly. Each query asks faiss for more than k, keeps the first k allowed, and
a query left short while the structure had more is asked again with twice as many.
The hot path (nothing to drop) is `LookalikeIndex.search_arrays` itself.
"""

from __future__ import annotations

import math

import numpy as np

from services.index._built import BuiltIndex
from services.index.neighbours import EMPTY_SCORE, rerank
from services.index.rows import RowTable


def filtered_search(
    built: BuiltIndex,
    table: RowTable,
    q: np.ndarray,
    k: int,
    banned: np.ndarray,
    min_score: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit queries q (Q, D) -> rows (Q, k) (-1 in empty slots), scores (Q, k): the best k
    live rows not in `banned` (R,) and scoring at least `min_score`. Caller: read lock."""
    out_rows = np.full((len(q), k), -1, dtype=np.int64)
    out_scores = np.full((len(q), k), EMPTY_SCORE, dtype=np.float32)
    fetch = min(built.max_k, first_fetch(built, k + len(banned)))
    todo = np.arange(len(q))
    while len(todo):
        got, rows = raw_search(built, q[todo], fetch)  # (T, F)
        ok = table.live(rows)
        if len(banned):
            ok &= ~np.isin(rows, banned)
        if min_score is not None:
            ok &= got >= min_score
        order = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # allowed hits first
        kept = np.take_along_axis(ok, order, 1)
        width = order.shape[1]
        out_rows[todo, :width] = np.where(kept, np.take_along_axis(rows, order, 1), -1)
        out_scores[todo, :width] = np.where(kept, np.take_along_axis(got, order, 1), EMPTY_SCORE)
        ended = rows[:, -1] < 0
        if min_score is not None:
            ended |= got[:, -1] < min_score
        short = (ok.sum(axis=1) < k) & ~ended
        if fetch >= built.max_k:
            break
        todo, fetch = todo[short], min(built.max_k, fetch * 2)
    return out_rows, out_scores


def raw_search(built: BuiltIndex, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
    """fetch hits a query (scores, rows), re-scored exactly when the codes are lossy."""
    if built.rerank <= 1 or built.gather is None:
        return built.search(q, fetch)
    _, found = built.search(q, min(built.max_k, fetch * built.rerank))
    return rerank(q, found, built.gather, fetch)


def first_fetch(built: BuiltIndex, wanted: int) -> int:
    """Hits to ask faiss for so that, after hidden entries are dropped, `wanted` most likely
    remain: scaled by the hidden fraction."""
    if not built.n_stale:
        return wanted
    live_fraction = max(0.05, 1.0 - built.n_stale / max(built.ntotal, 1))
    return math.ceil(wanted / live_fraction) + 8
