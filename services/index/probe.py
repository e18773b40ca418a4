"""The live recall probe: between index builds, how well the index in service still finds
the true nearest neighbours, as the vectors it holds keep changing under it.

Each build measures recall@k once (`calibrate.py`, `persona_index_recall_ratio{k}`); upserts
then move vectors in place without re-training the IVF lists, so recall can sink until the
next rebuild. Every `every_s` the probe, on a thread of its own, in order:

1. copies the vectors of the index in service (`LookalikeIndex.live_vectors`) and picks
   `queries` of them at random as queries;
2. exact search: the (k+1)-th best cosine of each query over every held vector, in chunks
   (the query itself is among its own hits, so k+1 leaves k others);
3. answers the same queries with the live index (`search_arrays`, k+1 hits: the setting
   chosen for k at the build) and counts, per query, the hits scoring at least that exact
   threshold (minus `EPS`), less one for the query itself: recall@k as faiss's
   distance-based measure, which ties between equal vectors cannot lower;
4. sets `persona_index_live_recall_ratio{k}` for each k of `IndexConfig.recall_ks` below
   the index's size. PersonaIndexRecallLow fires on it as on the build's measure.

Cost: a copy of the vectors and `queries` x N x D multiply-adds per probe (64 queries over
1M vectors of 64: ~4 GFLOP, about a second on one core) every 5 minutes by default.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
from prometheus_client import Gauge

from services.common.log_limit import LogLimit
from services.index.ann import LookalikeIndex
from services.index.holder import IndexHolder

log = logging.getLogger(__name__)
EPS = 1e-4  # cosine tolerance between faiss's scores and numpy's
CHUNK = 65_536  # held vectors per exact-search step: queries x CHUNK scores at a time


def exact_threshold(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """The (k+1)-th highest cosine of each query (S, D) over vectors (N, D), N > k: (S,).

    >>> v = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    >>> exact_threshold(v[:1], v, 1).round(2).tolist()
    [0.8]
    """
    best = np.full((len(queries), 0), -np.inf, np.float32)  # (S, <= k+1)
    for i in range(0, len(vectors), CHUNK):
        scores = queries @ vectors[i : i + CHUNK].T  # (S, chunk)
        both = np.concatenate([best, scores], axis=1)
        keep = min(k + 1, both.shape[1])
        best = -np.partition(-both, keep - 1, axis=1)[:, :keep]  # the keep best, any order
    return best.min(axis=1)


def live_recall(
    index: LookalikeIndex, queries: int, ks: Sequence[int], rng: np.random.Generator
) -> dict[int, float]:
    """recall@k of the index as it is now, for each k in `ks` below its size ({} if none)."""
    vectors = index.live_vectors()  # (N, D) unit
    n = len(vectors)
    ks = [k for k in ks if k < n]
    if not ks:
        return {}
    q = vectors[rng.choice(n, size=min(queries, n), replace=False)]  # (S, D)
    out = {}
    for k in ks:
        threshold = exact_threshold(q, vectors, k)  # (S,)
        found = index.search_arrays(q, k + 1).scores  # (S, k+1)
        hits = (found >= threshold[:, None] - EPS).sum(axis=1) - 1  # the query itself out
        out[k] = float(np.clip(hits, 0, k).mean() / k)
    return out


class RecallProbe:
    def __init__(
        self,
        holder: IndexHolder,
        gauge: Gauge,
        ks: Sequence[int],
        every_s: float,
        queries: int,
        seed: int | None = None,
    ) -> None:
        """`gauge`: `IndexMetrics.live_recall` (label k)."""
        self.holder = holder
        self.gauge = gauge
        self.ks = tuple(ks)
        self.every_s = every_s
        self.queries = queries
        self._rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="recall-probe", daemon=True)
        self._log_limit = LogLimit(300.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def probe(self) -> dict[int, float]:
        """One probe of the index in service; sets the gauge, returns {k: recall}."""
        served = self.holder.current()
        if served is None:
            return {}
        got = live_recall(served.index, self.queries, self.ks, self._rng)
        for k, r in got.items():
            self.gauge.labels(k=str(k)).set(r)
        return got

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.probe()
            except Exception as exc:  # a probe never stops serving
                if (held := self._log_limit(type(exc).__name__)) is not None:
                    log.warning("recall probe failed: %s%s", exc, LogLimit.more(held))
