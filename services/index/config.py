"""Configuration of the lookalike index."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

IndexKind = Literal["flat", "ivf", "ivfsq", "ivfpq", "hnsw"]
KindSetting = Literal["auto", IndexKind]  # what `IndexConfig.kind` takes
# the kinds whose CPU structure removes ids (replaced or deleted entries leave nothing
# hidden); the others hide them until a rebuild
REMOVABLE_KINDS: frozenset[str] = frozenset({"flat", "ivf", "ivfsq"})
# the kinds whose codes cannot give the vectors back: the index keeps a float16 copy
COPY_KINDS: frozenset[str] = frozenset({"ivfsq", "ivfpq"})
# below this many vectors a kind builds flat (IVF-PQ trains 256 points a sub-quantizer,
# IVF-SQ's 8-bit ranges want a few points a list)
_FLAT_BELOW = {"ivf": 2, "ivfsq": 1_000, "ivfpq": 10_000}
# "auto" builds IVF-SQ on the CPU for a recall target up to this; IVF-SQ's 8-bit codes cap
# recall@10 near 0.98 on 1M clustered vectors, so a higher target gets IVF-Flat
AUTO_SQ_MAX_TARGET = 0.97


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """How the lookalike index is built and searched.

    `kind="auto"` is exact flat inner product below `exact_below` vectors and IVF above it:
    IVF-SQ on the CPU (`recall_target` up to `AUTO_SQ_MAX_TARGET`), IVF-Flat on a GPU (faiss
    has no SQ on the GPU path here) or for a higher target. IVF rather than HNSW, by
    measurement on clustered 64-d unit vectors (2 CPU cores):
    at 100k, IVF (1264 lists) reached recall@10 0.99 at nprobe 2 with 55k batched queries/s
    where HNSW (M 32) needed efSearch 32 for 0.99 at 16k queries/s; at 1M IVF builds several
    times faster than HNSW. IVF also removes ids for real (upserts and deletions stay compact
    between rebuilds; HNSW can only hide them), needs no graph memory (HNSW M 32 adds ~256
    bytes a vector, as much as the vector) and clones to a GPU index. `kind="ivfpq"` is the
    memory-lean option for larger populations: IVF with 8-bit product-quantised codes
    (`pq_bytes` a vector) finds `ivfpq_rerank` x k candidates, re-scored exactly against a
    float16 copy of the vectors (~150 bytes a vector against IVF-Flat's ~300). `kind="ivfsq"`
    is the fast option: IVF with each vector's residual to its list's centroid in 8 bits a
    component (faiss `SQ8`), so a search reads a quarter of the bytes IVF-Flat reads; scores
    come from the codes (on 100k clustered 64-d vectors within 0.004 of the cosine, p99
    0.0024), read-backs from a float16 copy (~260 bytes a vector). At 1M clustered vectors
    it searched 1.4x IVF-Flat's queries/s at the same nprobe and recall@10 0.954 where
    IVF-Flat reached 0.972; its codes cap recall near 0.98, so a `recall_target` above ~0.97
    wants IVF-Flat (`benchmarks/ann.py --kind ivfsq`).

    The search setting (IVF `nprobe`, HNSW `efSearch`) is chosen at every build, for each k in
    `recall_ks`, as the cheapest reaching `recall_target` recall@k against exact search on
    `recall_sample` of the indexed vectors (`calibrate.py`): a fixed nprobe 16 visited 4-8x
    more lists than recall@10 0.95 needed on 1M clustered vectors, and reached only 0.92 on
    a 60k population with wider clusters. Setting `ivf_nprobe` / `hnsw_ef_search` pins it.

    Args:
        dim: vector length.
        kind: index structure; "auto" picks by size as above.
        exact_below: "auto" uses exact search below this many vectors.
        ivf_nlist: IVF lists; None means ~4*sqrt(n), at most n/39 and `ivf_nlist_max`.
        ivf_nlist_max: most IVF lists, whatever ivf_nlist says.
        ivf_nprobe: lists visited per query; None chooses it at each build from recall_target.
        ivf_train_per_list: k-means training sample, points per list (faiss warns below 39).
        ivf_kmeans_iters: most k-means iterations (faiss IVF's own 10).
        ivf_kmeans_tol: k-means stops after an iteration that raised its objective by less
            than this share (`kmeans.py`); 0 runs `ivf_kmeans_iters`.
        pq_bytes: bytes of an IVF-PQ code (0: dim / 4); must divide dim.
        ivfpq_rerank: IVF-PQ candidates re-scored per result wanted.
        hnsw_m, hnsw_ef_construction: HNSW graph parameters.
        hnsw_ef_search: HNSW search breadth; None chooses it at each build from recall_target.
        recall_target: recall@k the chosen search setting must reach on the build's sample.
        recall_ks: the k values calibrated; a search of k uses the setting of the smallest
            calibrated k >= k (the largest's beyond them).
        recall_sample: indexed vectors measured as queries at each build (exact search over
            all vectors for each: ~5 s for 1000 at 1M on 2 cores), while the new structure
            already serves with the setting measured on `recall_sample_first` (`tuning.py`).
        recall_sample_first: the sample measured before the new structure serves; at least
            `recall_sample` measures once, before.
        gpu: "auto" moves flat and IVF indexes to GPU 0 when faiss sees a GPU.
        rebuild_growth: `needs_rebuild()` once the size passes this multiple of the size at
            the last build (IVF lists were trained for the smaller set).
        max_stale_fraction: `needs_rebuild()` once hidden (replaced/deleted, not removable)
            entries exceed this fraction of the size.
        probe_every_s: the live recall probe measures the index in service this often
            (services/index/probe.py); 0: never.
        probe_queries: held vectors the probe uses as queries.
    """

    dim: int = 64
    kind: KindSetting = "auto"
    exact_below: int = 50_000
    ivf_nlist: int | None = None
    ivf_nlist_max: int = 65_536
    ivf_nprobe: int | None = None
    ivf_train_per_list: int = 64
    ivf_kmeans_iters: int = 10
    ivf_kmeans_tol: float = 1e-3
    pq_bytes: int = 0
    ivfpq_rerank: int = 4
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int | None = None
    recall_target: float = 0.95
    recall_ks: tuple[int, ...] = (10, 50)
    recall_sample: int = 1000
    recall_sample_first: int = 100
    gpu: Literal["auto", "off"] = "auto"
    rebuild_growth: float = 2.0
    max_stale_fraction: float = 0.2
    probe_every_s: float = 300.0
    probe_queries: int = 64

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        for name in ("ivf_nprobe", "hnsw_ef_search"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.hnsw_m < 2:
            raise ValueError(f"hnsw_m must be >= 2, got {self.hnsw_m}")
        if self.ivf_train_per_list < 39:
            raise ValueError(f"ivf_train_per_list must be >= 39, got {self.ivf_train_per_list}")
        if self.ivf_nlist is not None and self.ivf_nlist < 1:
            raise ValueError(f"ivf_nlist must be >= 1 or None, got {self.ivf_nlist}")
        if self.ivf_kmeans_iters < 1 or self.ivfpq_rerank < 1:
            raise ValueError("ivf_kmeans_iters and ivfpq_rerank must be >= 1")
        if self.pq_bytes < 0 or (self.pq_bytes and self.dim % self.pq_bytes):
            raise ValueError(f"pq_bytes must divide dim {self.dim}, got {self.pq_bytes}")
        if not 0.0 < self.recall_target <= 1.0:
            raise ValueError(f"recall_target must be in (0, 1], got {self.recall_target}")
        if not self.recall_ks or min(self.recall_ks) < 1:
            raise ValueError(f"recall_ks must be positive ints, got {self.recall_ks}")
        if min(self.recall_sample, self.recall_sample_first) < 10:
            raise ValueError("recall_sample and recall_sample_first must be >= 10")
        if self.ivf_kmeans_tol < 0:
            raise ValueError(f"ivf_kmeans_tol must be >= 0, got {self.ivf_kmeans_tol}")
        if self.probe_every_s < 0 or self.probe_queries < 1:
            raise ValueError("probe_every_s must be >= 0 and probe_queries >= 1")
        if self.rebuild_growth <= 1.0:
            raise ValueError(f"rebuild_growth must be > 1, got {self.rebuild_growth}")

    def kind_for(self, n: int, gpu: bool = False) -> IndexKind:
        """The structure a build over n vectors uses (`gpu`: the index searches on a GPU).
        IVF needs training data, so a small set is flat whatever the kind (`_FLAT_BELOW`)."""
        if self.kind != "auto":
            return "flat" if n < _FLAT_BELOW.get(self.kind, 0) else self.kind
        if n < self.exact_below:
            return "flat"
        # IVF-SQ wants a few points a list for its 8-bit ranges: IVF-Flat below that
        return next((k for k in (self.large_kind(gpu), "ivf") if n >= _FLAT_BELOW[k]), "flat")

    def large_kind(self, gpu: bool = False) -> IndexKind:
        """The kind of a large build: `kind`, with "auto" resolved (see the class docstring)."""
        if self.kind != "auto":
            return self.kind
        return "ivf" if gpu or self.recall_target > AUTO_SQ_MAX_TARGET else "ivfsq"

    def nlist_for(self, n: int) -> int:
        """IVF list count for n vectors: the configured value or ~4*sqrt(n), never more than
        n/39 lists (faiss k-means wants >= 39 points per centroid)."""
        want = self.ivf_nlist if self.ivf_nlist is not None else round(4 * math.sqrt(n))
        return max(1, min(want, self.ivf_nlist_max, n // 39))

    def pq_bytes_for(self, dim: int) -> int:
        """Bytes of an IVF-PQ code: `pq_bytes`, else dim / 4 (the largest divisor of dim
        not above it)."""
        if self.pq_bytes:
            return self.pq_bytes
        return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)
