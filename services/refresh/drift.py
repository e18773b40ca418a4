"""Drift: how far a refresh moves users' vectors, and how far the vectors' lengths sit from
the version's training sample. Quality signals only: nothing here changes what is written.

In order, per batch of the refresher's rounds (not the cutover's back-fill):

1. `read`, in the read stage (the reader thread, overlapped with the encode of the batch
   before): each user's stored head vector of every written version, one pipelined read per
   version (`Vectors.read_batch`, history 1). A failed read logs (at most every 30 s) and
   measures nothing for that batch; the refresh goes on.
2. `observe`, after the batch is committed: per version, the cosine distance 1 - cos(new,
   previous) of every user that had a previous vector of that version goes into
   `persona_refresh_vector_drift_cosine{version}` (0: same direction, 1: orthogonal, 2:
   opposite; zero vectors are left out); `persona_refresh_vector_norm_ratio{version}` is set
   to the batch's mean vector length over the mean length of the version's parity sample
   (`parity.npy` in the registry: what the trained model gave a sample of training windows),
   when the registry has one.

The batch's users are distinct from those of the batch being committed meanwhile, so the
head read in step 1 is the vector the new one replaces (several refreshers share buckets,
never users).

Example: a user whose vector was [1, 0] and is now [1, 1] moved 1 - 1/sqrt(2) = 0.29.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder.registry import RegistryError, check_name
from services.common.log_limit import LogLimit
from services.refresh.metrics import RefreshMetrics
from services.store.protocols import Vectors
from services.store.records import StoredVector, VectorBatch

log = logging.getLogger(__name__)
READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Previous:
    """The stored head vector of each user of a batch, per version (row i: user_ids[i])."""

    user_ids: Sequence[str]
    heads: dict[str, VectorBatch]


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos between the rows of a and b, both (N, D); NaN where a row is all zeros.

    >>> cosine_distance(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]])).round(3).tolist()
    [0.293]
    """
    dot = np.einsum("nd,nd->n", a, b)  # (N,)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (N,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, 1.0 - dot / norms, np.nan)


class Drift:
    def __init__(self, vectors: Vectors, metrics: RefreshMetrics, models_dir: Path | None) -> None:
        """`models_dir`: the registry the parity samples are read from (None: no norm ratio)."""
        self.vectors = vectors
        self.metrics = metrics
        self.models_dir = models_dir
        self._parity: dict[str, float | None] = {}  # version -> mean parity vector length
        self._log_limit = LogLimit(30.0)

    def read(self, user_ids: Sequence[str], versions: Sequence[str]) -> Previous | None:
        deadline = time.monotonic() + READ_TIMEOUT_S
        try:
            heads = {v: self.vectors.read_batch(user_ids, v, 1, deadline) for v in versions}
        except Exception as exc:  # a quality signal never fails the refresh
            if (held := self._log_limit("read")) is not None:
                log.warning("drift: previous vectors not read: %s%s", exc, LogLimit.more(held))
            return None
        return Previous(user_ids, heads)

    def observe(self, prev: Previous | None, vectors: Sequence[StoredVector]) -> None:
        by_ver: dict[str, list[StoredVector]] = {}
        for v in vectors:
            by_ver.setdefault(v.model_version, []).append(v)
        rows = {u: i for i, u in enumerate(prev.user_ids)} if prev is not None else {}
        for ver, vs in by_ver.items():
            new = np.stack([v.vector for v in vs]).astype(np.float32, copy=False)  # (B, D)
            ref = self.parity_norm(ver)
            if ref:
                ratio = float(np.linalg.norm(new, axis=1).mean()) / ref
                self.metrics.norm_ratio.labels(version=ver).set(ratio)
            head = prev.heads.get(ver) if prev is not None else None
            if head is None or head.dim != new.shape[1]:
                continue  # nobody had a vector of this version (or of this dimension)
            at = np.fromiter((rows.get(v.user_id, -1) for v in vs), np.int64, len(vs))  # (B,)
            had = at >= 0
            had[had] = head.count[at[had]] > 0
            dist = cosine_distance(new[had], head.vectors[at[had], 0])  # (M,)
            hist = self.metrics.drift.labels(version=ver)
            for d in dist[~np.isnan(dist)].tolist():
                hist.observe(d)

    def parity_norm(self, version: str) -> float | None:
        """The mean vector length of the version's parity sample (None: none to read)."""
        if version not in self._parity:
            norm = None
            if self.models_dir is not None:
                try:
                    p = np.load(self.models_dir / check_name(version) / "parity.npy")
                    norm = float(np.linalg.norm(p, axis=1).mean()) if len(p) else None
                except (OSError, ValueError, RegistryError):
                    norm = None
            self._parity[version] = norm or None
        return self._parity[version]
