"""Synthetic clustered unit vectors: the shared data set of the recall test and the benchmark.

User vectors are not uniform on the sphere: users gather around interests. The model here is
`n_clusters` random unit centres, each point a centre plus isotropic Gaussian noise, then
L2-normalised. With `spread=1.0` a point's cosine to its centre is about 0.7, so clusters
overlap enough that an ANN index has real work to do (uniform data would be harder still,
a handful of tight clusters far easier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class ClusteredSpec:
    dim: int = 64
    n_clusters: int = 1000
    spread: float = 1.0
    seed: int = 0


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32. x: (N, D)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_unit_vectors(
    n: int, n_queries: int, spec: ClusteredSpec = ClusteredSpec()
) -> tuple[np.ndarray, np.ndarray]:
    """Base vectors (n, D) and held-out queries (n_queries, D) drawn around the same centres.

    Example: `base, queries = clustered_unit_vectors(100_000, 1_000)` gives float32 unit rows.
    """
    rng = np.random.default_rng(spec.seed)
    centres = normalise(rng.standard_normal((spec.n_clusters, spec.dim)))  # (C, D)
    scale = spec.spread / np.sqrt(spec.dim)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, spec.dim), dtype=np.float32)
        for start in range(0, m, 262_144):  # chunks keep the float64 temporaries small
            size = min(262_144, m - start)
            which = rng.integers(0, spec.n_clusters, size=size)
            noise = rng.standard_normal((size, spec.dim), dtype=np.float32) * scale
            out[start : start + size] = normalise(centres[which] + noise)
        return out

    return draw(n), draw(n_queries)
