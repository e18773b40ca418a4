"""Building a faiss structure over a snapshot of the index's vectors (`BuiltIndex`).

Flat: every vector, exact. IVF, IVF-SQ and IVF-PQ: coarse centroids by k-means on a sample
(`kmeans.py`, stopped once it stops improving), each vector assigned to its list, each
list filled in one call at its exact size. HNSW: the graph, built by faiss. An approximate
structure whose setting is not pinned comes with a `tuning.Tuner`: the caller measures
and installs its setting (before serving on a small sample, after on the full one).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from services.index._built import BuiltIndex, Gather, fx
from services.index.calibrate import ivf_rank_guess
from services.index.config import COPY_KINDS, REMOVABLE_KINDS, IndexConfig, IndexKind
from services.index.kmeans import spherical_kmeans
from services.index.tuning import Tuner, hnsw_params, hnsw_tuner, ivf_params, ivf_tuner


def build(
    cfg: IndexConfig,
    vectors: np.ndarray,
    rows: np.ndarray,
    gpu_resources: Any | None,
    gather: Gather | None = None,
) -> tuple[BuiltIndex, Tuner | None]:
    """Builds the structure `cfg.kind_for(len(vectors), gpu)` over vectors (N, D) with ids rows
    (N,); returns it and, unless the config pins its setting, the tuner that chooses it.

    `gather` reads vectors back by row for the kinds that cannot (IVF-PQ). `gpu_resources`
    (a `faiss.StandardGpuResources`) moves flat and IVF searches to GPU 0.
    """
    n, dim = vectors.shape
    kind = cfg.kind_for(n, gpu_resources is not None)
    tuner: Tuner | None = None
    if kind == "flat":
        master = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        built = BuiltIndex(master, master, kind, False, True, n)
        built.add(vectors, rows)
    elif kind in ("ivf", "ivfsq", "ivfpq"):
        built, tuner = _build_ivf(cfg, kind, vectors, rows, gather)
    else:
        master = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT))
        fx.downcast_index(master.index).hnsw.efConstruction = cfg.hnsw_ef_construction
        built = BuiltIndex(master, master, kind, False, False, n)
        built.add(vectors, rows)
        if cfg.hnsw_ef_search is not None:
            built.params = {1: hnsw_params(1, cfg.hnsw_ef_search)}
        else:
            tuner = hnsw_tuner(cfg, built, vectors, rows)
    if gpu_resources is not None and kind in ("flat", "ivf"):
        pinned = built.params.get(1)
        built.index = faiss.index_cpu_to_gpu(gpu_resources, 0, built.master)
        if pinned is not None:  # GPU search takes the setting as an attribute
            built.index.nprobe = pinned.nprobe
        built.params, built.on_gpu, built.removable = {}, True, False
    return built, tuner


def _build_ivf(
    cfg: IndexConfig, kind: IndexKind, vectors: np.ndarray, rows: np.ndarray, gather: Gather | None
) -> tuple[BuiltIndex, Tuner | None]:
    n, dim = vectors.shape
    nlist = cfg.nlist_for(n)
    codes = {"ivf": "Flat", "ivfsq": "SQ8", "ivfpq": f"PQ{cfg.pq_bytes_for(dim)}np"}
    code = codes[kind]  # SQ8: residuals to the centroid, 8 bits a component; np: no polysemous
    ivf: Any = faiss.index_factory(dim, f"IVF{nlist},{code}", faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfpq":  # one 256-centroid k-means per code byte: a smaller sample, fewer rounds
        ivf.pq.cp.niter, ivf.pq.cp.max_points_per_centroid = cfg.ivf_kmeans_iters, 64
    picked = _training_rows(n, max(cfg.ivf_train_per_list * nlist,
                                   64 * 256 if kind == "ivfpq" else 0))  # fmt: skip
    sample = vectors if picked is None else vectors[picked]
    centroids = spherical_kmeans(sample, nlist, cfg.ivf_kmeans_iters, cfg.ivf_kmeans_tol)
    ivf.quantizer.add(centroids.centroids)
    _, assigned = ivf.quantizer.search(vectors, 1)
    list_of = assigned[:, 0]  # (N,) each vector's list
    if kind != "ivf":  # IVF-Flat's codes are the vectors: nothing to train
        _train_codes(
            ivf, centroids.centroids, sample, list_of if picked is None else list_of[picked]
        )
    ivf.is_trained = True  # its quantizer holds the centroids, its codes are trained
    del sample
    _add_by_list(ivf, vectors, rows, list_of)
    removable, copied = kind in REMOVABLE_KINDS, kind in COPY_KINDS
    if removable:  # an id -> (list, offset) hash map: removal and read-back by id
        ivf.set_direct_map_type(fx.DirectMap.Hashtable)
    rerank = cfg.ivfpq_rerank if kind == "ivfpq" else 1  # IVF-SQ's 8-bit scores stand
    built = BuiltIndex(ivf, None if copied else ivf, kind, False, removable, n, rerank=rerank)
    built.gather = gather if copied else None  # read-backs from the float16 copy
    built.kmeans_iterations = centroids.iterations
    if cfg.ivf_nprobe is not None:
        built.params = {1: ivf_params(1, min(cfg.ivf_nprobe, nlist))}
        return built, None
    guess = ivf_rank_guess(ivf.quantizer, list_of, nlist, cfg.recall_target)
    return built, ivf_tuner(cfg, built, vectors, rows, guess, nlist)


def _train_codes(ivf: Any, centroids: np.ndarray, sample: np.ndarray, lists: np.ndarray) -> None:
    """Trains the codes' quantizers (IVF-PQ's sub-quantizers, IVF-SQ's ranges) on the
    residuals of sample (S, D) to its lists (S,) of centroids (nlist, D), on the subsample
    `ivf.train` would take. `ivf.train` would search the sample against the lists again;
    the full assignment of every vector has just found them."""
    cap = ivf.train_encoder_num_vectors()  # IVF-PQ: 256 centroids x 64 points; SQ8: 100k
    if 0 < cap < len(sample):
        sub = _training_rows(len(sample), cap)
        sample, lists = sample[sub], lists[sub]
    assign = np.ascontiguousarray(lists, dtype=np.int64)
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if ivf.by_residual:  # as `ivf.train` does: the codes quantise residuals to the centroid
        x = x - centroids[assign]
    ivf.train_encoder(len(x), faiss.swig_ptr(x), faiss.swig_ptr(assign))


def _add_by_list(ivf: Any, vectors: np.ndarray, rows: np.ndarray, list_of: np.ndarray) -> None:
    """Fills each IVF list in one `add_entries` call, so each list's buffer is its exact size
    (faiss's `add` grows them by doubling). vectors (N, D), rows (N,), list_of (N,)."""
    order = np.argsort(list_of, kind="stable")
    sp, n = faiss.swig_ptr, len(rows)
    if isinstance(ivf, faiss.IndexIVFFlat):
        codes = np.ascontiguousarray(vectors[order]).view(np.uint8)  # (N, D * 4)
    else:  # (N, code_size) the codes `add` would store (PQ of the residuals)
        codes = np.empty((n, ivf.code_size), dtype=np.uint8)
        x, lists = np.ascontiguousarray(vectors[order]), np.ascontiguousarray(list_of[order])
        ivf.encode_vectors(n, sp(x), sp(lists), sp(codes))
    ids = np.ascontiguousarray(rows[order], dtype=np.int64)
    counts = np.bincount(list_of, minlength=ivf.nlist)
    invlists, at = ivf.invlists, 0
    for lst in np.flatnonzero(counts).tolist():
        c = int(counts[lst])
        invlists.add_entries(lst, c, sp(ids[at : at + c]), sp(codes[at : at + c]))
        at += c
    ivf.ntotal = len(rows)


def _training_rows(n: int, at_most: int) -> np.ndarray | None:
    """At most `at_most` sorted rows of n, chosen with a fixed seed; None: all of them.

    k-means cost grows with points x lists: on 1M vectors and 4000 lists faiss's own
    cap (256 a list) keeps all 1M points and training took ~400 s on 2 busy cores.
    """
    if n <= at_most:
        return None
    return np.sort(np.random.default_rng(0).choice(n, size=at_most, replace=False))
