"""A built structure's search setting, measured (`calibrate.py`) and installed after the build.

`build()` returns a `Tuner` beside each approximate structure whose setting is not pinned.
The index measures with it twice (`ann.LookalikeIndex.rebuild`): on a small sample
(`IndexConfig.recall_sample_first`) before the new structure is swapped in, so it serves at
once with a setting near the right one, then on the full sample (`recall_sample`) while it
serves, holding the index's shared lock around each search (writes go on between them), and
installs that. The exact search for the full sample's truth (~5 s for 1000 queries at 1M on
2 cores) is then no longer between a rebuild's start and the new structure serving.

Searches go to the CPU structure with explicit `faiss.SearchParameters`, so measuring never
changes the setting live searches use; a GPU clone takes the installed `nprobe` as an
attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.index._built import HNSW_MAX_EF, BuiltIndex, fx
from services.index.calibrate import Calibration, Guess, calibrate
from services.index.config import IndexConfig
from services.index.neighbours import rerank

# () -> a context held around each measuring search (the index's shared lock once serving)
Guard = Callable[[], AbstractContextManager[object]]


@dataclass(slots=True)
class Tuner:
    """Measures `built`'s recall against exact search over `vectors` (N, D) (ids `rows`),
    and installs the setting chosen."""

    cfg: IndexConfig
    built: BuiltIndex
    vectors: np.ndarray
    rows: np.ndarray
    first: Guess | int  # a starting setting, or a guess from the truth
    most: int  # the largest setting
    make: Callable[[int, int], Any]  # (k, setting) -> faiss.SearchParameters

    def measure(self, sample: int, guard: Guard = nullcontext) -> Calibration | None:
        """The cheapest setting reaching the recall target on `sample` indexed vectors."""
        if len(self.vectors) < 2:
            return None

        def search_at(q: np.ndarray, k: int, setting: int) -> np.ndarray:
            params = self.make(k, setting)
            with guard():
                return _reranked(self.built, q, k, params)

        return calibrate(
            self.vectors,
            self.rows,
            search_at,
            target=self.cfg.recall_target,
            ks=self.cfg.recall_ks,
            sample=sample,
            first=self.first,
            most=self.most,
        )

    def install(self, cal: Calibration | None) -> None:
        """Makes `cal`'s settings the ones searches use (one attribute store each)."""
        if cal is None:
            return
        b = self.built
        if b.on_gpu:  # GPU search takes the setting as an attribute
            b.index.nprobe = max(cal.params.values())
        else:
            b.params = {k: self.make(k, p) for k, p in cal.params.items()}
        b.calibration = cal


def ivf_params(k: int, nprobe: int) -> Any:
    """faiss's search parameters of an IVF search of k with `nprobe` lists."""
    return fx.SearchParametersIVF(nprobe=nprobe)


def hnsw_params(k: int, ef: int) -> Any:
    """faiss's search parameters of an HNSW search of k (efSearch never below k)."""
    p = fx.SearchParametersHNSW()
    p.efSearch = max(ef, k)
    return p


def ivf_tuner(cfg: IndexConfig, built: BuiltIndex, vectors: np.ndarray, rows: np.ndarray,
              guess: Guess, nlist: int) -> Tuner:  # fmt: skip
    return Tuner(cfg, built, vectors, rows, guess, nlist, ivf_params)


def hnsw_tuner(cfg: IndexConfig, built: BuiltIndex, vectors: np.ndarray, rows: np.ndarray) -> Tuner:
    return Tuner(cfg, built, vectors, rows, min(cfg.recall_ks), HNSW_MAX_EF, hnsw_params)


def _reranked(built: BuiltIndex, queries: np.ndarray, k: int, params: Any) -> np.ndarray:
    """Rows (Q, k) of a CPU search with `params`, re-scored from the exact copy where the
    codes are lossy."""
    index = built.master if built.on_gpu else built.index
    if built.rerank <= 1 or built.gather is None:
        return _search(index, queries, k, params)
    found = _search(index, queries, min(built.max_k, k * built.rerank), params)
    return rerank(queries, found, built.gather, k)[1]


def _search(index: Any, queries: np.ndarray, k: int, params: Any) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return np.asarray(index.search(q, k, params=params)[1])
