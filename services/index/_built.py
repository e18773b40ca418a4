"""One built faiss index and what the lookalike index needs to know about it.

Kept apart from `ann.py` so the faiss specifics (factory strings, direct maps, GPU cloning,
which structures can remove ids) live in one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from services.index.config import IndexConfig, IndexKind

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # faiss GPU search refuses larger k


def gpu_available(cfg: IndexConfig) -> bool:
    """True when `cfg.gpu == "auto"` and faiss sees a GPU. `index_cpu_to_gpu` raises on a
    CPU build, so this is checked before any GPU call."""
    return cfg.gpu == "auto" and faiss.get_num_gpus() > 0


@dataclass(slots=True)
class BuiltIndex:
    """A faiss index holding (vector, faiss id) pairs.

    `removable` says whether `remove_ids` works (CPU flat and IVF). Otherwise (HNSW, any
    GPU index) a replaced or deleted entry stays in the structure, hidden at search time,
    and `n_stale` counts them until the next rebuild drops them.
    """

    index: Any  # faiss.Index; faiss's stubs type the SWIG classes loosely
    kind: IndexKind
    on_gpu: bool
    removable: bool
    built_size: int
    n_stale: int = 0

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def max_k(self) -> int:
        return GPU_MAX_K if self.on_gpu else max(1, self.ntotal)

    def add(self, vectors: np.ndarray, fids: np.ndarray) -> None:
        """vectors: (N, D) float32 unit rows; fids: (N,) int64."""
        if len(fids):
            self.index.add_with_ids(vectors, fids)

    def remove(self, fids: np.ndarray) -> None:
        """Removes fids (N,) int64 that the index holds, or hides them when it cannot."""
        if not len(fids):
            return
        if not self.removable:
            self.n_stale += len(fids)
            return
        removed = int(self.index.remove_ids(np.ascontiguousarray(fids, dtype=np.int64)))
        if removed != len(fids):
            log.warning("faiss removed %d of %d ids", removed, len(fids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries: (Q, D) -> scores (Q, k) float32, fids (Q, k) int64 (-1 where none)."""
        scores, fids = self.index.search(queries, k)
        return scores, fids


def build(
    cfg: IndexConfig,
    vectors: np.ndarray,
    fids: np.ndarray,
    gpu_resources: Any | None,
) -> BuiltIndex:
    """Builds the structure `cfg.kind_for(len(vectors))` over vectors (N, D) with ids fids (N,).

    IVF is trained on a sample of the vectors, `ivf_train_per_list` points a list.
    `gpu_resources` (a `faiss.StandardGpuResources`) moves flat and IVF indexes to GPU 0;
    HNSW stays on the CPU.
    """
    n, dim = vectors.shape
    kind = cfg.kind_for(n)
    metric = faiss.METRIC_INNER_PRODUCT
    index: Any
    removable = True
    if kind == "flat":
        index = faiss.index_factory(dim, "IDMap,Flat", metric)
    elif kind == "ivf":
        nlist = cfg.nlist_for(n)
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", metric)
        index.train(_training_sample(vectors, cfg.ivf_train_per_list * nlist))
        # A hash table from id to (list, offset) makes remove_ids cost O(removed), not O(n).
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        index.nprobe = min(cfg.ivf_nprobe, nlist)
    else:
        index = faiss.index_factory(dim, f"IDMap,HNSW{cfg.hnsw_m},Flat", metric)
        hnsw: Any = faiss.downcast_index(index.index)
        hnsw.hnsw.efConstruction = cfg.hnsw_ef_construction
        hnsw.hnsw.efSearch = cfg.hnsw_ef_search
        removable = False
    on_gpu = False
    if gpu_resources is not None and kind != "hnsw":
        if kind == "ivf":
            index.set_direct_map_type(faiss.DirectMap.NoMap)  # type: ignore[attr-defined]
        index = faiss.index_cpu_to_gpu(gpu_resources, 0, index)
        if kind == "ivf":
            index.nprobe = min(cfg.ivf_nprobe, cfg.nlist_for(n))
        on_gpu, removable = True, False
    built = BuiltIndex(index=index, kind=kind, on_gpu=on_gpu, removable=removable, built_size=n)
    built.add(vectors, fids)
    return built


def _training_sample(vectors: np.ndarray, at_most: int) -> np.ndarray:
    """At most `at_most` rows of vectors (N, D), chosen with a fixed seed.

    k-means cost grows with points x lists: on 1M vectors and 4000 lists faiss's own
    cap (256 a list) keeps all 1M points and training took ~400 s on 2 busy cores.
    """
    if len(vectors) <= at_most:
        return vectors
    rows = np.random.default_rng(0).choice(len(vectors), size=at_most, replace=False)
    return vectors[np.sort(rows)]
