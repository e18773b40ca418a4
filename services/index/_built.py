"""One built faiss structure and what the lookalike index needs to know about it.

Kept apart from `ann.py` so the faiss specifics (which structures can remove ids, how
vectors are read back, how much they hold) live in one place; `building.py` makes them.

The structure is the master copy of the vectors (chosen by measurement, see
`benchmarks/ann.py` and docs/benchmarks.md): flat and IVF-Flat hold every vector in float32
and give it back by id (`reconstruct`), so no second copy is kept beside them. IVF lists are
filled one list at a time with each list's exact size (faiss's own `add` grows each list's
buffer by doubling: ~1.4x the vectors' bytes at 1M), and an id -> (list, offset) hash map
makes removal and read-back O(ids). HNSW stores its vectors flat too. IVF-PQ and IVF-SQ
cannot give their vectors back exactly: their index keeps a float16 copy (`rows.RowCopy`);
IVF-PQ re-ranks with it, IVF-SQ's 8-bit scores stand (config.py: how close they are).
A GPU index searches a clone; the CPU structure stays the master.

faiss ids are the index's row numbers; -1 means "no hit".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from services.index.calibrate import Calibration
from services.index.config import IndexConfig, IndexKind

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # faiss GPU search refuses larger k
HNSW_MAX_EF = 4096
SMALL_BATCH = 4  # queries searched with one OpenMP thread (waking the team costs more)
fx: Any = faiss  # faiss's stubs miss much of its SWIG surface
_ptr = fx._swigfaiss.swig_ptr  # noqa: SLF001  # faiss.swig_ptr is a Python wrapper of it
_DEFAULT_THREADS = faiss.omp_get_max_threads()
_omp = threading.local()

# rows (R,) -> their vectors (R, D) float32, from a copy kept outside the structure
Gather = Callable[[np.ndarray], np.ndarray]


def gpu_available(cfg: IndexConfig) -> bool:
    """True when `cfg.gpu == "auto"` and faiss sees a GPU. `index_cpu_to_gpu` raises on a
    CPU build, so this is checked before any GPU call."""
    return cfg.gpu == "auto" and faiss.get_num_gpus() > 0


def omp_threads_for(n_queries: int) -> None:
    """One OpenMP thread in this thread for a small batch, the default for a large one.

    A single-query IVF search with 2 threads spent ~80 us of ~130 us waking the team
    (OMP_WAIT_POLICY=PASSIVE); with one it took ~50 us. The setting is per calling thread
    (OpenMP's nthreads-var), so concurrent batched searches elsewhere keep their threads.
    """
    want = 1 if n_queries <= SMALL_BATCH else _DEFAULT_THREADS
    if getattr(_omp, "threads", _DEFAULT_THREADS) != want:
        faiss.omp_set_num_threads(want)
        _omp.threads = want


@dataclass(slots=True)
class BuiltIndex:
    """A faiss structure holding (vector, row) pairs.

    `removable` says whether `remove_ids` works on the searched structure (CPU flat and
    IVF). Otherwise (HNSW, IVF-PQ, any GPU index) a replaced or deleted entry stays in it,
    hidden at search time (its row maps to no user), and `n_stale` counts them until the
    next rebuild drops them. `rerank` > 1: the structure's scores are approximate; ask it
    for `rerank` x k hits and score them again from `gather`.
    """

    index: Any  # faiss.Index searched (maybe a GPU clone); faiss's stubs type SWIG loosely
    master: Any  # the CPU faiss.Index holding the vectors (None when `gather` holds them)
    kind: IndexKind
    on_gpu: bool
    removable: bool
    built_size: int
    calibration: Calibration | None = None
    rerank: int = 1
    gather: Gather | None = None
    n_stale: int = 0
    params: dict[int, Any] = field(default_factory=dict)  # k -> faiss.SearchParameters
    kmeans_iterations: int = 0  # IVF: k-means iterations its lists' centroids took

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def max_k(self) -> int:
        return GPU_MAX_K if self.on_gpu else max(1, self.ntotal)

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        """vectors: (N, D) float32 unit rows; rows: (N,) int64."""
        if len(rows):
            self.index.add_with_ids(vectors, rows)
            if self.master is not None and self.master is not self.index:
                self.master.add_with_ids(vectors, rows)

    def remove(self, rows: np.ndarray) -> None:
        """Removes rows (N,) the structure holds, or hides them when it cannot."""
        if not len(rows):
            return
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if self.master is not None and self.master is not self.index:
            self.master.remove_ids(rows)
        if not self.removable:
            self.n_stale += len(rows)
            return
        removed = int(self.index.remove_ids(rows))
        if removed != len(rows):
            log.warning("faiss removed %d of %d ids", removed, len(rows))

    @property
    def fast_k(self) -> int:
        """The largest k searched as asked (faiss pads past ntotal; GPU refuses more)."""
        return GPU_MAX_K if self.on_gpu else 1 << 62

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries: (Q, D) unit float32, C-contiguous -> scores (Q, k) float32, rows (Q, k)
        int64 (-1 where none), with the setting installed for k (`tuning.py`). Calls faiss's C entry
        directly (faiss's Python `search` re-checks and re-converts what callers checked)."""
        n = len(queries)
        omp_threads_for(n)
        scores = np.empty((n, k), dtype=np.float32)
        rows = np.empty((n, k), dtype=np.int64)
        params = self.params.get(k) or self.params_for(k)
        self.index.search_c(n, _ptr(queries), k, _ptr(scores), _ptr(rows), params)
        return scores, rows

    def params_for(self, k: int) -> Any:
        """The faiss.SearchParameters calibrated for a search of k (None: the index's own)."""
        found = self.params.get(k)
        if found is None and self.params:
            ks = sorted(self.params)
            found = self.params[next((c for c in ks if c >= k), ks[-1])]
        return found

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """(R,) rows the structure holds -> their vectors (R, D) float32."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if self.gather is not None:
            return self.gather(rows)
        if not len(rows):
            return np.zeros((0, self.index.d), np.float32)
        return np.asarray(self.master.reconstruct_batch(rows), dtype=np.float32)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (row, vector) the master holds: rows (N,), vectors (N, D) float32 (stale
        entries of a non-removable structure included; the caller keeps the live ones)."""
        m = self.master
        if isinstance(m, faiss.IndexIVF):
            return _ivf_contents(m)
        ids = faiss.vector_to_array(m.id_map).astype(np.int64)  # IndexIDMap2
        inner: Any = fx.downcast_index(m.index)
        flat: Any = (
            inner if isinstance(inner, faiss.IndexFlat) else fx.downcast_index(inner.storage)
        )
        vecs = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)
        return ids, np.array(vecs, dtype=np.float32).reshape(flat.ntotal, flat.d)

    def structure_bytes(self) -> int:
        """Bytes the master structure holds for its vectors, ids and maps (estimated: faiss
        does not say; the id hash map counted at 60 bytes an entry: a 32-byte node and ~1.5
        buckets of 8, as measured against the process's resident memory)."""
        m, d = self.master, self.index.d
        if m is None or isinstance(m, faiss.IndexIVF):  # codes (IVF-PQ, -SQ) or IVF-Flat
            ivf = faiss.extract_index_ivf(self.index) if m is None else m
            hashed = ivf.direct_map.type == fx.DirectMap.Hashtable  # IVF-Flat's and -SQ's
            return _ivf_bytes(ivf) + ivf.quantizer.ntotal * d * 4 + hashed * ivf.ntotal * 60
        inner = faiss.downcast_index(m.index)
        graph = 0
        if isinstance(inner, faiss.IndexHNSW):
            graph = fx.downcast_index(inner).hnsw.neighbors.size() * 4 + inner.ntotal * 16
        return m.ntotal * (d * 4 + 8 + 40) + graph


def _ivf_contents(ivf: Any) -> tuple[np.ndarray, np.ndarray]:
    lists = ivf.invlists
    sizes = [lists.list_size(i) for i in range(ivf.nlist)]
    n, d = sum(sizes), ivf.d
    ids = np.empty(n, np.int64)
    vecs = np.empty((n, d), np.float32)
    at = 0
    for i, size in enumerate(sizes):
        if size:
            ids[at : at + size] = faiss.rev_swig_ptr(lists.get_ids(i), size)
            codes = faiss.rev_swig_ptr(lists.get_codes(i), size * ivf.code_size)
            vecs[at : at + size] = np.frombuffer(codes, np.float32).reshape(size, d)
            at += size
    return ids, vecs


def _ivf_bytes(ivf: Any) -> int:
    n = sum(ivf.invlists.list_size(i) for i in range(ivf.nlist))
    return int(n * (ivf.code_size + 8))
