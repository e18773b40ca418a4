"""Lookalike index benchmark: Persona's index beside the public ANN peers on the same data in
the same run, at matched recall, and beside the bare faiss search it wraps.

    OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/ann.py [--n 1000000]

Data: clustered unit vectors (services/index/synthetic.py, the golden test's generator);
held-out queries from the same clusters; truth from exact search (faiss IndexFlatIP).
Recall@k as faiss contrib's knn_intersection_measure.

Contenders, all in this process, built one after another:
- Persona: `LookalikeIndex` at its defaults, or of `--kind` (e.g. `ivfsq`, the 8-bit IVF
  option; the search setting chosen at the build from the recall target), searched with
  `search_arrays` (ids mapped, lock taken). Build = upsert of
  string ids + rebuild (k-means, filling, the setting measured on 100 vectors, the swap,
  then on 1,000); "serving after" stops at the swap, "build" at the final setting. The
  `search()` tuples row adds the Python (user, score) pair per hit.
- faiss under Persona: the same built structure searched with faiss's Python `search` and
  the same parameters: the "bare faiss search it wraps".
- faiss IVF-Flat: `IVF{4 sqrt n},Flat` (faiss's guideline for lists), trained on the same
  64-a-list sample as Persona with faiss IVF's own k-means (10 iterations), filled with
  `add`; nprobe raised until its recall@k reaches Persona's (its "serving after" = build).
- hnswlib: M 16, efConstruction 100; ef raised from k until its recall@k reaches Persona's.

Speeds: "batched" = all queries in one call (every core); "single" = one query per call,
one thread (faiss with one OpenMP thread in the calling thread, hnswlib num_threads=1; a
single-query search with 2 OpenMP threads spends most of its time waking them), p50/p99
over `--single` queries, each query put to every contender in turn. Batched calls are timed
in turns (`--batched` calls each in every one of `--rounds` rounds, order alternating), the
median kept, so a load change on a shared machine hits all alike. Memory: anonymous RSS
growth over the build (after malloc_trim), the data arrays excluded; Persona's own
accounting (`LookalikeIndex.memory()`) beside it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.index import BuildInfo, IndexConfig, LookalikeIndex
from services.index._built import omp_threads_for
from services.index.config import KindSetting
from services.index.synthetic import ClusteredSpec, clustered_unit_vectors

log = logging.getLogger("benchmarks.ann")
KS = (10, 50)
NPROBE_SWEEP = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256)
EF_SWEEP = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768)

Search = Callable[[np.ndarray, int], Any]


@dataclass(slots=True)
class Contender:
    name: str
    build_s: float = 0.0  # until searched at its final setting
    memory_mib: float = 0.0
    params: dict[int, str] = field(default_factory=dict)
    recall: dict[int, float] = field(default_factory=dict)
    batched: Search | None = None  # (queries, k) -> anything
    single: Search | None = None
    # (k, recall to reach, recall@k of the current setting) -> the setting chosen
    tune: Callable[[int, float, Callable[[int], float]], None] | None = None
    qps: dict[int, list[float]] = field(default_factory=dict)
    lat: dict[int, list[float]] = field(default_factory=dict)  # seconds a query
    serving_s: float = float("nan")  # Persona: until the new structure served (else build_s)

    @property
    def serves_after(self) -> float:
        return self.build_s if np.isnan(self.serving_s) else self.serving_s


def anon_mib() -> float:
    """Anonymous resident memory of this process, MiB, after returning freed heap."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    return kb / 1024


def measured(build: Callable[[], Any]) -> tuple[Any, float, float]:
    """(what build returned, seconds, MiB of anonymous memory it kept)."""
    before = anon_mib()
    t0 = time.perf_counter()
    out = build()
    seconds = time.perf_counter() - t0
    return out, seconds, anon_mib() - before


def rows_of(found: Any, k: int) -> np.ndarray:
    return np.asarray(found, dtype=np.int64)[:, :k]


def persona_lean(base: np.ndarray) -> Contender:
    """The memory-lean option (`kind="ivfpq"`) at its own calibrated setting."""

    def build() -> LookalikeIndex:
        idx = LookalikeIndex(IndexConfig(dim=base.shape[1], kind="ivfpq", gpu="off"))
        idx.upsert([str(i) for i in range(len(base))], base)
        idx.rebuild()
        return idx

    idx, seconds, mib = measured(build)
    cal = idx.built.calibration
    params = {k: f"ivfpq, setting {cal.param_for(k) if cal else '-'}" for k in KS}
    lean = Contender("Persona IVF-PQ + re-rank (memory-lean)", seconds, mib, params)
    lean.batched = lean.single = idx.search_arrays
    return lean


def persona(
    base: np.ndarray, kind: KindSetting = "auto"
) -> tuple[Contender, Contender, Contender, LookalikeIndex]:
    infos: list[BuildInfo] = []

    def build() -> LookalikeIndex:
        idx = LookalikeIndex(IndexConfig(dim=base.shape[1], kind=kind, gpu="off"))
        idx.upsert([str(i) for i in range(len(base))], base)
        infos.append(idx.rebuild())
        return idx

    idx, seconds, mib = measured(build)
    built = idx.built
    cal = built.calibration
    params = {k: f"{built.kind}, setting {cal.param_for(k) if cal else '-'}" for k in KS}
    arrays = Contender("Persona LookalikeIndex.search_arrays", seconds, mib, params)
    arrays.batched = arrays.single = idx.search_arrays
    tuples = Contender("Persona LookalikeIndex.search (tuples)", seconds, mib, params)
    tuples.batched = tuples.single = idx.search
    # the rebuild measured the full recall sample after the new structure served
    arrays.serving_s = tuples.serving_s = seconds - (infos[0].seconds - infos[0].serving_s)
    log.info("Persona build: serving after %.1f s, setting measured after %.1f s; k-means "
             "iterations %d", arrays.serving_s, seconds, infos[0].kmeans_iterations)  # fmt: skip

    def bare(q: np.ndarray, k: int) -> Any:
        omp_threads_for(len(q))
        return built.index.search(q, k, params=built.params_for(k))

    under = Contender("faiss under Persona (bare search)", float("nan"), float("nan"), params)
    under.batched = under.single = bare
    return arrays, tuples, under, idx


def faiss_ivf(base: np.ndarray, per_list: int) -> Contender:
    n, dim = base.shape
    nlist = max(1, min(round(4 * np.sqrt(n)), n // 39))

    def build() -> Any:
        index: Any = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        rows = np.random.default_rng(0).choice(n, size=min(n, per_list * nlist), replace=False)
        index.train(base[np.sort(rows)])
        index.add(base)
        return index

    index, seconds, mib = measured(build)
    ivf = Contender(f"faiss IVF-Flat (nlist {nlist})", seconds, mib)
    chosen: dict[int, Any] = {}

    def search(q: np.ndarray, k: int) -> Any:
        omp_threads_for(len(q))
        return index.search(q, k, params=chosen[k])[1]

    def tune(k: int, target: float, recall: Callable[[int], float]) -> None:
        for p in NPROBE_SWEEP:
            chosen[k] = faiss.SearchParametersIVF(nprobe=min(p, nlist))  # type: ignore[call-arg]
            if recall(k) >= target or p >= nlist:
                ivf.params[k] = f"nprobe {min(p, nlist)}"
                return

    ivf.batched = ivf.single = search
    ivf.tune = tune
    return ivf


def hnswlib_peer(base: np.ndarray, m: int, ef_construction: int) -> Contender:
    import hnswlib

    def build() -> Any:
        index = hnswlib.Index(space="ip", dim=base.shape[1])
        index.init_index(len(base), M=m, ef_construction=ef_construction, random_seed=0)
        index.add_items(base, np.arange(len(base)))
        return index

    index, seconds, mib = measured(build)
    peer = Contender(f"hnswlib (M {m}, efC {ef_construction})", seconds, mib)
    efs: dict[int, int] = {}

    def batched(q: np.ndarray, k: int) -> Any:
        index.set_ef(efs[k])
        return index.knn_query(q, k=k, num_threads=-1)[0]

    def single(q: np.ndarray, k: int) -> Any:
        index.set_ef(efs[k])
        return index.knn_query(q, k=k, num_threads=1)[0]

    def tune(k: int, target: float, recall: Callable[[int], float]) -> None:
        for ef in (e for e in EF_SWEEP if e >= k):
            efs[k] = ef
            if recall(k) >= target or ef == EF_SWEEP[-1]:
                peer.params[k] = f"ef {ef}"
                return

    peer.batched, peer.single, peer.tune = batched, single, tune
    return peer


def time_round(
    contenders: list[Contender], queries: np.ndarray, k: int, single: int, batched: int
) -> None:
    """`batched` batched calls each, the contenders taking turns (each pass in the other
    order), then `single` queries one at a time, each query put to every contender in turn
    (a load change mid-loop hits all of them alike)."""
    for b in range(batched):
        for c in contenders if b % 2 == 0 else contenders[::-1]:
            assert c.batched is not None
            t0 = time.perf_counter()
            c.batched(queries, k)
            c.qps.setdefault(k, []).append(len(queries) / (time.perf_counter() - t0))
    calls = [(c.single, c.lat.setdefault(k, [])) for c in contenders]
    clock = time.perf_counter
    for i in range(single):
        q = queries[i : i + 1]
        for one, lat in calls if i % 2 == 0 else calls[::-1]:
            assert one is not None
            t0 = clock()
            one(q, k)
            lat.append(clock() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=1_000_000, help="base vectors")
    p.add_argument("--queries", type=int, default=2_000)
    p.add_argument("--single", type=int, default=1_000, help="queries timed one by one")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batched", type=int, default=6, help="batched calls a round, each")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--hnsw-ef-construction", type=int, default=100)
    p.add_argument("--skip-hnswlib", action="store_true")
    p.add_argument("--lean", action="store_true", help="also Persona's kind=ivfpq")
    kinds = get_args(KindSetting)
    p.add_argument("--kind", default="auto", choices=kinds, help="Persona's index kind")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    t_start = time.perf_counter()
    base, queries = clustered_unit_vectors(args.n, args.queries, ClusteredSpec(dim=args.dim))
    _, truth = faiss.knn(queries, base, max(KS), metric=faiss.METRIC_INNER_PRODUCT)
    single = min(args.single, args.queries)

    def recall_of(c: Contender, k: int) -> float:
        assert c.batched is not None
        found = c.batched(queries, k)
        if isinstance(found, tuple):  # Neighbours (ids, scores) or faiss (scores, ids)
            found = found[0] if found[0].dtype.kind == "S" else found[1]
        if found.dtype.kind == "S":  # the benchmark's user ids are row numbers
            found = np.where(found == b"", b"-1", found).astype(np.int64)
        return knn_intersection_measure(rows_of(found, k), truth[:, :k])

    log.info("Persona")
    arrays, tuples, under, idx = persona(base, args.kind)
    per_list = idx.config.ivf_train_per_list
    contenders = [arrays, tuples, under]
    log.info("faiss IVF-Flat")
    contenders.append(faiss_ivf(base, per_list))
    if not args.skip_hnswlib:
        log.info("hnswlib")
        contenders.append(hnswlib_peer(base, args.hnsw_m, args.hnsw_ef_construction))
    if args.lean:
        log.info("Persona IVF-PQ")
        contenders.append(persona_lean(base))
    for k in KS:
        arrays.recall[k] = tuples.recall[k] = under.recall[k] = recall_of(arrays, k)
        for c in contenders[3:]:
            if c.tune is not None:  # a peer: its setting raised to Persona's recall
                c.tune(k, arrays.recall[k], lambda kk, c=c: recall_of(c, kk))  # type: ignore[misc]
            c.recall[k] = recall_of(c, k)
    log.info("timing: %d rounds", args.rounds)
    for r in range(args.rounds):
        for k in KS:
            time_round(contenders if r % 2 == 0 else contenders[::-1], queries, k, single,
                       args.batched)  # fmt: skip
    total = time.perf_counter() - t_start
    report(args, contenders, idx, single)
    _command(total, argv)
    return 0


def report(
    args: argparse.Namespace,
    contenders: list[Contender],
    idx: LookalikeIndex,
    single: int,
) -> None:
    print(
        f"\nn {args.n:,} x dim {args.dim}, {args.queries} held-out queries ({single} timed "
        f"singly), {args.rounds} rounds of {args.batched} batched calls each; "
        f"{os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), faiss {faiss.__version__}, "
        f"OPENBLAS_NUM_THREADS={os.getenv('OPENBLAS_NUM_THREADS')}\n"
    )
    print("| index | k | parameters | recall@k | QPS batched | single p50 us | single p99 us "
          "| serving after s | build s | memory MiB |")  # fmt: skip
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in KS:
        for c in contenders:
            lat = np.array(c.lat[k]) * 1e6
            print(
                f"| {c.name} | {k} | {c.params.get(k, '-')} | {c.recall[k]:.4f} | "
                f"{np.median(c.qps[k]):,.0f} | {np.percentile(lat, 50):.0f} | "
                f"{np.percentile(lat, 99):.0f} | {c.serves_after:.1f} | {c.build_s:.1f} | "
                f"{c.memory_mib:.0f} |"
            )
    arrays, _, under, *peers = contenders
    mem = idx.memory()
    print(
        f"\nPersona's accounting: {sum(mem.values()) / 2**20:.0f} MiB ("
        + ", ".join(f"{part} {n / 2**20:.0f}" for part, n in mem.items())
        + ")"
    )
    print("\nratios (Persona / other; QPS > 1 and latency, build, memory < 1 favour Persona):")
    lean = [c for c in peers if c.tune is None]
    public = [c for c in peers if c.tune is not None]
    for mine, other in [(arrays, under), *((m, o) for m in [arrays, *lean] for o in public)]:
        for k in KS:
            print(f"- {mine.name} vs {other.name}, k={k}: " + ratios(mine, other, k))


def ratios(mine: Contender, other: Contender, k: int) -> str:
    a, o = np.array(mine.lat[k]), np.array(other.lat[k])
    out = (
        f"QPS {np.median(mine.qps[k]) / np.median(other.qps[k]):.2f}, "
        f"single p50 {np.percentile(a, 50) / np.percentile(o, 50):.2f}, "
        f"p99 {np.percentile(a, 99) / np.percentile(o, 99):.2f}"
    )
    if np.isfinite(other.build_s):  # not the bare search (same build)
        out += f", serving after {mine.serves_after / other.serves_after:.2f}"
        out += f", build {mine.build_s / other.build_s:.2f}, "
        out += f"memory {mine.memory_mib / other.memory_mib:.2f}"
    return out


def _command(total: float, argv: list[str] | None) -> None:
    cmd = shlex.join(["python", "benchmarks/ann.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"\ncommand: `{cmd}` (total {total:.0f} s)")


if __name__ == "__main__":
    raise SystemExit(main())
