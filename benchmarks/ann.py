"""Lookalike index benchmark: recall@10 and queries/s of the configured default index,
beside exact search (faiss IndexFlatIP) and hnswlib tuned to the same recall.

    OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/ann.py [--n 1000000]

Data: clustered unit vectors (services/index/synthetic.py, the golden test's generator),
held-out queries from the same clusters. Recall is measured like faiss
contrib.evaluation.knn_intersection_measure against the exact top-k. "single" is one
query per call (the serving path), "batched" one call for all queries. The default index
is timed through LookalikeIndex (user-id mapping and filtering included); its build time
is upsert plus rebuild. hnswlib's ef is raised until its recall reaches the faiss index's
(hnswlib silently uses max(ef, k), so the sweep starts at k).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.index import IndexConfig, LookalikeIndex
from services.index.synthetic import ClusteredSpec, clustered_unit_vectors

log = logging.getLogger("benchmarks.ann")
EF_SWEEP = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    params: str
    build_s: float
    recall: float
    qps_single: float
    qps_batched: float


def qps(
    search: Callable[[np.ndarray], object], queries: np.ndarray, single: int
) -> tuple[float, float]:
    """(single-query QPS over the first `single` queries, batched QPS over all)."""
    t0 = time.perf_counter()
    for i in range(single):
        search(queries[i : i + 1])
    one = single / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    search(queries)
    return one, len(queries) / (time.perf_counter() - t0)


def bench_exact(
    base: np.ndarray, queries: np.ndarray, k: int, single: int
) -> tuple[Row, np.ndarray]:
    t0 = time.perf_counter()
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)
    build = time.perf_counter() - t0
    _, truth = exact.search(queries, k)  # (Q, k) row numbers
    one, batched = qps(lambda q: exact.search(q, k), queries, single)
    return Row("exact (faiss IndexFlatIP)", "-", build, 1.0, one, batched), truth


def bench_default(
    base: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int, single: int
) -> Row:
    cfg = IndexConfig(dim=base.shape[1])
    idx = LookalikeIndex(cfg)
    t0 = time.perf_counter()
    idx.upsert([str(i) for i in range(len(base))], base)
    info = idx.rebuild()
    build = time.perf_counter() - t0
    found = np.array([[int(u) for u, _ in h] for h in idx.search(queries, k)], dtype=np.int64)
    recall = knn_intersection_measure(found, truth)
    one, batched = qps(lambda q: idx.search(q, k), queries, single)
    if info.kind == "ivf":
        params = f"IVF-Flat nlist {cfg.nlist_for(len(base))}, nprobe {cfg.ivf_nprobe}"
    else:
        params = info.kind
    where = "GPU" if info.on_gpu else "CPU"
    return Row(f"default LookalikeIndex ({where})", params, build, recall, one, batched)


def bench_hnswlib(
    base: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    single: int,
    target: float,
    m: int,
    ef_construction: int,
) -> Row:
    import hnswlib

    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=m, ef_construction=ef_construction, random_seed=0)
    index.add_items(base, np.arange(len(base)))
    build = time.perf_counter() - t0
    ef, recall = EF_SWEEP[0], 0.0
    for ef in (e for e in EF_SWEEP if e >= k):
        index.set_ef(ef)
        labels, _ = index.knn_query(queries, k=k)
        recall = knn_intersection_measure(labels.astype(np.int64), truth)
        if recall >= target:
            break
    one, batched = qps(
        lambda q: index.knn_query(q, k=k, num_threads=1 if len(q) == 1 else -1), queries, single
    )
    return Row("hnswlib", f"M {m}, efC {ef_construction}, ef {ef}", build, recall, one, batched)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=1_000_000, help="base vectors")
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--single", type=int, default=500, help="queries timed one by one")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--hnsw-ef-construction", type=int, default=100)
    p.add_argument("--skip-hnswlib", action="store_true")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()
    base, queries = clustered_unit_vectors(args.n, args.queries, ClusteredSpec(dim=args.dim))
    single = min(args.single, args.queries)
    log.info("data ready; exact search")
    exact, truth = bench_exact(base, queries, args.k, single)
    log.info("default index")
    rows = [exact, bench_default(base, queries, truth, args.k, single)]
    if not args.skip_hnswlib:
        log.info("hnswlib")
        rows.append(
            bench_hnswlib(
                base,
                queries,
                truth,
                args.k,
                single,
                rows[1].recall,
                args.hnsw_m,
                args.hnsw_ef_construction,
            )
        )
    total = time.perf_counter() - t0

    k = args.k
    print(
        f"n {args.n:,} x dim {args.dim}, {args.queries} queries ({single} timed singly), "
        f"k {k}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"faiss {faiss.__version__}, OPENBLAS_NUM_THREADS={os.getenv('OPENBLAS_NUM_THREADS')}\n"
    )
    print(f"| index | parameters | build s | recall@{k} | QPS single | QPS batched |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r.name} | {r.params} | {r.build_s:.1f} | {r.recall:.4f} | "
            f"{r.qps_single:,.0f} | {r.qps_batched:,.0f} |"
        )
    cmd = shlex.join(["python", "benchmarks/ann.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"\ncommand: `{cmd}` (total {total:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
