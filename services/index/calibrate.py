"""Search parameters chosen from a recall target, measured against exact search at each build.

A fixed `nprobe` is wrong at both ends: on one population it visits far more lists than the
target needs, on another (wider clusters, more users) it falls short. So every build of an
approximate structure measures, on a sample of the vectors it holds, the cheapest setting
whose recall@k reaches `IndexConfig.recall_target`, for each k in `IndexConfig.recall_ks`.

Order of work (`calibrate`):
1. Sample S of the N indexed vectors (fixed seed) as queries.
2. Exact top-(k_max + 1) of each among all N (inner product, `exact.py`), the query's
   own row dropped: its k_max true neighbours.
3. A first guess of the parameter, where the structure can give one without searching
   (`guess`): for IVF the rank, in the query's own list order, of the list holding each
   true neighbour; IVF scans the lists it probes exhaustively, so the recall@k of
   `nprobe = p` is the share of true neighbours whose list ranks below p, for every p at
   once (a lossy code can only lose more, which step 4 checks).
4. Real searches through the built structure at the guess and then up a ladder
   (`LADDER_STEP` apart) until the measured recall@k on the sample reaches the target or
   the ladder ends: that setting and its measured recall are kept, and exported.

The sample's queries are indexed vectors with themselves excluded; the golden test
(`tests/index/test_index_recall.py`) holds the chosen setting to the target on held-out
queries.

Example: 1M clustered 64-d vectors, IVF 4000 lists: exact top-51 of 1000 sampled vectors
(~3 s on 2 cores), list ranks give nprobe 4 for recall@10 >= 0.95, one search of the
sample measures 0.96, so nprobe 4 is kept for k <= 10.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from services.index.exact import exact_knn

LADDER_STEP = 1.25  # each real-search retry asks for 25 % more (at least one more)

# (queries (S, D), k, param) -> faiss ids (S, k)
SearchAt = Callable[[np.ndarray, int, int], np.ndarray]
# (queries (S, D), true neighbours' positions (S, k), k) -> the cheapest param predicted
Guess = Callable[[np.ndarray, np.ndarray, int], int]


@dataclass(frozen=True, slots=True)
class Calibration:
    """What a build measured.

    Args:
        params: k -> the setting chosen (nprobe for IVF, efSearch for HNSW).
        recall: k -> recall@k measured with it on the sample (below the target only where
            the largest setting could not reach it).
        sample: queries measured.
        seconds: time spent measuring.
    """

    params: dict[int, int]
    recall: dict[int, float]
    sample: int
    seconds: float

    def param_for(self, k: int) -> int:
        """The setting for a search of k: that of the smallest calibrated k >= k, else the
        largest calibrated k's (recall for larger k is not measured)."""
        ks = sorted(self.params)
        return self.params[next((c for c in ks if c >= k), ks[-1])]


def exact_neighbours(vectors: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Positions (S, k) of the k nearest vectors (inner product) to vectors[rows], each
    query's own position left out. vectors: (N, D) float32, rows: (S,), k < N."""
    return _drop(exact_knn(vectors[rows], vectors, k + 1), rows, k)


def _drop(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """found (S, k+1) minus each row's own id `own` (S,) (else its last entry) -> (S, k)."""
    keep = found != own[:, None]
    keep[keep.all(axis=1), -1] = False  # own id not found: drop the last instead
    return found[keep].reshape(len(found), k)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of truth (S, k) ids present in found (S, k) row by row (faiss contrib's
    knn_intersection_measure, vectorised)."""
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2)  # (S, k)
    return float(hits.mean())


def ivf_rank_guess(quantizer: faiss.Index, list_of: np.ndarray, nlist: int, target: float) -> Guess:
    """Step 3 for IVF: list_of (N,) is each indexed vector's list, as assigned when added."""

    centroids = quantizer.reconstruct_n(0, nlist)  # (nlist, D)

    def guess(queries: np.ndarray, truth: np.ndarray, k: int) -> int:
        # (S, nlist) lists, best first: one matmul and a sort (a faiss search with k=nlist
        # keeps a heap of nlist a query, ~10x slower)
        order = np.argsort(-(queries @ centroids.T), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(nlist, dtype=order.dtype)[None, :], axis=1)
        ranks = np.take_along_axis(rank, list_of[truth[:, :k]], axis=1)  # (S, k)
        curve = np.cumsum(np.bincount(ranks.ravel(), minlength=nlist)) / ranks.size
        return int(np.searchsorted(curve, target - 1e-9)) + 1

    return guess


def calibrate(
    vectors: np.ndarray,
    ids: np.ndarray,
    search_at: SearchAt,
    *,
    target: float,
    ks: Sequence[int],
    sample: int,
    first: Guess | int,
    most: int,
    seed: int = 0,
) -> Calibration:
    """The cheapest setting in [1, most] reaching recall@k >= target, for each k in ks.

    Args:
        vectors: (N, D) the unit vectors the structure holds; ids: (N,) their faiss ids.
        search_at: searches the built structure with a setting.
        target: recall@k to reach.
        ks: the k values to calibrate (each < N).
        sample: queries to measure with (at most N).
        first: a starting setting, or a `Guess` that predicts one from the truth.
        most: the largest setting (IVF: nlist).
    """
    t0 = time.perf_counter()
    n = len(vectors)
    ks = sorted({min(k, n - 1) for k in ks if k >= 1})
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    queries = vectors[rows]  # (S, D)
    truth_pos = exact_neighbours(vectors, rows, ks[-1])  # (S, k_max) positions
    truth = ids[truth_pos]  # (S, k_max) faiss ids
    own = ids[rows]  # (S,)
    params: dict[int, int] = {}
    recall: dict[int, float] = {}
    start = 1
    for k in ks:
        p = first(queries, truth_pos, k) if callable(first) else first
        p = min(most, max(p, start))
        while True:
            found = _drop(search_at(queries, k + 1, p), own, k)
            r = recall_at(found, truth[:, :k])
            if r >= target or p >= most:
                break
            p = min(most, max(p + 1, math.ceil(p * LADDER_STEP)))
        params[k], recall[k] = p, r
        start = p  # a larger k never needs less
    return Calibration(params, recall, len(rows), time.perf_counter() - t0)
