"""Golden recall test: the default index against exact search on 100k clustered vectors."""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from services.index import IndexConfig, LookalikeIndex
from services.index.synthetic import clustered_unit_vectors

log = logging.getLogger(__name__)

N, N_QUERIES, K, MIN_RECALL = 100_000, 1_000, 10, 0.95


def test_default_index_recall_at_10() -> None:
    cfg = IndexConfig(gpu="off")  # defaults; GPU off so CI and GPU hosts measure the same index
    assert cfg.kind_for(N) != "flat", "the golden test must exercise the approximate index"
    base, queries = clustered_unit_vectors(N, N_QUERIES)  # (N, 64), (Q, 64)
    exact = faiss.IndexFlatIP(cfg.dim)
    exact.add(base)
    _, truth = exact.search(queries, K)  # (Q, K) row numbers

    idx = LookalikeIndex(cfg)
    idx.upsert([str(i) for i in range(N)], base)
    t0 = time.perf_counter()
    info = idx.rebuild()
    build_s = time.perf_counter() - t0
    assert info.kind == idx.kind == "ivf"
    found = np.array(
        [[int(u) for u, _ in hits] for hits in idx.search(queries, K)], dtype=np.int64
    )  # (Q, K)
    recall = knn_intersection_measure(found, truth)
    print(
        f"\nrecall@{K} = {recall:.4f} ({info.kind}, nlist {cfg.nlist_for(N)}, "
        f"nprobe {cfg.ivf_nprobe}, n {N}, build {build_s:.1f} s)"
    )
    assert recall >= MIN_RECALL
