"""LookalikeIndex: nearest users by cosine over L2-normalised vectors, kept current in place.

Storage. The master copy of every vector lives in numpy (`_vecs`, one row a user), so a
rebuild needs nothing but the index itself. A row's faiss id is `(generation << 32) | row`;
the generation moves on every write or delete of the row, so an id is never reused and a
faiss hit whose generation is out of date (a replaced or deleted vector that the structure
could not remove) is recognised and dropped at search time.

Example:
    >>> idx = LookalikeIndex(IndexConfig(dim=2))
    >>> idx.upsert(["a", "b"], np.array([[1, 0], [0.6, 0.8]], dtype=np.float32))
    >>> idx.search(np.array([[1, 0]], dtype=np.float32), k=2)
    [[('a', 1.0), ('b', 0.6...)]]

Concurrency. Searches take a shared lock; upserts, deletes and the swap at the end of a
rebuild take it exclusively. `rebuild()` copies the live vectors under the shared lock,
builds without any lock (searches and upserts go on against the old index), then, under
the exclusive lock, replays onto the new index what changed meanwhile and swaps it in.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.index._built import BuiltIndex, build, gpu_available
from services.index._rwlock import RWLock
from services.index.config import IndexConfig, IndexKind

log = logging.getLogger(__name__)

_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """What a `rebuild()` produced."""

    kind: IndexKind
    size: int
    seconds: float
    on_gpu: bool


@dataclass(slots=True)
class _Journal:
    """faiss ids retired and added while a rebuild was building."""

    retired: list[np.ndarray] = field(default_factory=list)
    added: list[np.ndarray] = field(default_factory=list)


class LookalikeIndex:
    """Thread-safe user-id keyed ANN index; see the module docstring."""

    def __init__(self, config: IndexConfig | None = None) -> None:
        self.config = config or IndexConfig()
        self._lock = RWLock()
        self._rebuild_lock = threading.Lock()
        self._gpu_res: Any | None = None
        if gpu_available(self.config):
            import faiss

            self._gpu_res = faiss.StandardGpuResources()
        dim = self.config.dim
        self._vecs = np.zeros((0, dim), dtype=np.float32)  # (capacity, D) master copy
        self._gen = np.zeros(0, dtype=np.int64)  # (capacity,) bumped on every write/delete
        self._live = np.zeros(0, dtype=bool)  # (capacity,)
        self._users: list[str | None] = []  # row -> user id
        self._row_of: dict[str, int] = {}
        self._free: list[int] = []
        self._journal: _Journal | None = None
        self._changes_since_build = 0
        self._built = build(
            self.config, np.zeros((0, dim), np.float32), np.zeros(0, np.int64), self._gpu_res
        )

    # ----- reads -------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def size(self) -> int:
        """Number of users held."""
        return len(self._row_of)

    def __len__(self) -> int:
        return self.size

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._row_of

    @property
    def kind(self) -> IndexKind:
        """The structure in use now (may lag the config's choice until `rebuild()`)."""
        return self._built.kind

    @property
    def on_gpu(self) -> bool:
        return self._built.on_gpu

    @property
    def changes_since_build(self) -> int:
        return self._changes_since_build

    def vector_of(self, user_id: str) -> np.ndarray | None:
        """A copy of the user's stored (unit) vector, or None."""
        with self._lock.read():
            row = self._row_of.get(user_id)
            return None if row is None else self._vecs[row].copy()

    def sum_of(self, user_ids: Iterable[str]) -> np.ndarray:
        """(D,) float64: the sum of the stored (unit) vectors of those of `user_ids` that
        have one (zeros if none do); one lock and one gather for the whole list."""
        with self._lock.read():
            get = self._row_of.get
            rows = [r for r in map(get, user_ids) if r is not None]
            if not rows:
                return np.zeros(self.dim, np.float64)
            return self._vecs[rows].sum(axis=0, dtype=np.float64)

    def needs_rebuild(self) -> bool:
        """True when the structure no longer fits the data: the config wants another kind
        for this size, the size passed `rebuild_growth` times the built size, or too many
        hidden entries accumulated."""
        cfg, built, n = self.config, self._built, self.size
        if cfg.kind_for(n) != built.kind:
            return True
        if built.kind != "flat" and n > cfg.rebuild_growth * max(built.built_size, 1):
            return True
        return built.n_stale > max(1_000, cfg.max_stale_fraction * n)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: set[str] | None = None,
        min_score: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Nearest users for each query, best first.

        Args:
            queries: (Q, D) vectors; normalised here, so any non-zero length works.
            k: results per query, at most.
            exclude: user ids never returned (e.g. the seed audience).
            min_score: drop results with cosine below this.

        Returns:
            Q lists of up to k (user_id, cosine) pairs, highest cosine first.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = self._checked(queries, "queries")
        exclude = exclude or set()
        out: list[list[tuple[str, float]]] = [[] for _ in range(len(q))]
        with self._lock.read():
            built = self._built
            if built.ntotal == 0 or len(q) == 0:
                return out
            fetch = min(built.max_k, self._first_fetch(built, k + len(exclude)))
            todo = np.arange(len(q))
            while len(todo):
                scores, fids = built.search(q[todo], fetch)
                short = []
                for j, qi in enumerate(todo):
                    out[qi] = self._filter(scores[j], fids[j], k, exclude, min_score)
                    below = min_score is not None and scores[j, -1] < min_score
                    if len(out[qi]) < k and fids[j, -1] >= 0 and not below:
                        short.append(qi)
                if fetch >= built.max_k:
                    break
                todo = np.asarray(short, dtype=np.int64)
                fetch = min(built.max_k, fetch * 2)
        return out

    @staticmethod
    def _first_fetch(built: BuiltIndex, wanted: int) -> int:
        """Hits to ask faiss for so that, after hidden entries are dropped, `wanted` most
        likely remain: scaled by the hidden fraction. A short query is asked again with
        twice as many."""
        if not built.n_stale:
            return wanted
        live_fraction = max(0.05, 1.0 - built.n_stale / max(built.ntotal, 1))
        return math.ceil(wanted / live_fraction) + 8

    def _filter(
        self,
        scores: np.ndarray,
        fids: np.ndarray,
        k: int,
        exclude: set[str],
        min_score: float | None,
    ) -> list[tuple[str, float]]:
        """One query's raw hits (F,) -> at most k live, allowed (user, score) pairs."""
        rows = np.where(fids >= 0, fids & _ROW_MASK, 0)
        ok = (fids >= 0) & self._live[rows] & (self._gen[rows] == fids >> _ROW_BITS)
        hits: list[tuple[str, float]] = []
        for row, score, good in zip(rows.tolist(), scores.tolist(), ok.tolist(), strict=True):
            if min_score is not None and score < min_score:
                break
            user = self._users[row]
            if not good or user is None or user in exclude:
                continue
            hits.append((user, score))
            if len(hits) == k:
                break
        return hits

    # ----- writes ------------------------------------------------------------------------

    def upsert(self, user_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Sets each user's vector (normalised), replacing any earlier one.

        Args:
            user_ids: N non-empty strings; a repeated id keeps its last vector.
            vectors: (N, D) finite, non-zero.
        """
        ids = self._checked_ids(user_ids)
        vecs = self._checked(vectors, "vectors")
        if len(ids) != len(vecs):
            raise ValueError(f"{len(ids)} user ids but {len(vecs)} vectors")
        last = {u: i for i, u in enumerate(ids)}
        if len(last) != len(ids):
            ids, vecs = list(last), vecs[list(last.values())]
        if not ids:
            return
        with self._lock.write():
            retired: list[int] = []
            rows = np.empty(len(ids), dtype=np.int64)
            for i, user in enumerate(ids):
                row = self._row_of.get(user)
                if row is None:
                    row = self._alloc_row(user)
                else:
                    retired.append(self._fid(row))
                rows[i] = row
            self._gen[rows] += 1
            self._vecs[rows] = vecs
            self._live[rows] = True
            self._apply(np.asarray(retired, dtype=np.int64), self._gen[rows] << _ROW_BITS | rows)

    def delete(self, user_ids: Iterable[str]) -> int:
        """Removes the users; unknown ids are ignored. Returns how many were removed."""
        with self._lock.write():
            rows = [r for r in (self._row_of.pop(u, None) for u in user_ids) if r is not None]
            if not rows:
                return 0
            arr = np.asarray(rows, dtype=np.int64)
            retired = self._gen[arr] << _ROW_BITS | arr
            self._gen[arr] += 1
            self._live[arr] = False
            for row in rows:
                self._users[row] = None
            self._free.extend(rows)
            self._apply(retired, np.zeros(0, dtype=np.int64))
            return len(rows)

    def rebuild(self) -> BuildInfo:
        """Builds a fresh structure from the master vectors and swaps it in atomically.

        Picks the kind for the current size, retrains IVF lists and drops hidden entries.
        Searches and writes proceed during the build; writes made meanwhile are replayed
        onto the new structure before the swap. One rebuild runs at a time.
        """
        with self._rebuild_lock:
            t0 = time.perf_counter()
            with self._lock.read():
                rows = np.flatnonzero(self._live)
                vecs = self._vecs[rows]  # (N, D) copy
                fids = self._gen[rows] << _ROW_BITS | rows
                journal = self._journal = _Journal()
            try:
                new = build(self.config, vecs, fids, self._gpu_res)
                with self._lock.write():
                    self._replay(new, journal, fids)
                    self._built = new
                    self._changes_since_build = 0
                    self._journal = None
            finally:
                self._journal = None  # a failed build leaves the old structure in place
            info = BuildInfo(
                new.kind, new.ntotal - new.n_stale, time.perf_counter() - t0, new.on_gpu
            )
        log.info(
            "index rebuilt: %s over %d vectors in %.2f s%s",
            info.kind,
            info.size,
            info.seconds,
            " on GPU" if info.on_gpu else "",
        )
        return info

    # ----- internals (callers hold the write lock) ---------------------------------------

    def _fid(self, row: int) -> int:
        return int(self._gen[row]) << _ROW_BITS | row

    def _alloc_row(self, user: str) -> int:
        if self._free:
            row = self._free.pop()
        else:
            row = len(self._users)
            if row > _ROW_MASK:
                raise ValueError("index full: 2**32 rows")
            if row == len(self._vecs):
                self._grow(max(1024, 2 * row))
            self._users.append(None)
        self._users[row] = user
        self._row_of[user] = row
        return row

    def _grow(self, capacity: int) -> None:
        extra = capacity - len(self._vecs)
        self._vecs = np.concatenate([self._vecs, np.zeros((extra, self.dim), np.float32)])
        self._gen = np.concatenate([self._gen, np.zeros(extra, np.int64)])
        self._live = np.concatenate([self._live, np.zeros(extra, bool)])

    def _apply(self, retired: np.ndarray, added: np.ndarray) -> None:
        """Brings the live structure (and a running rebuild's journal) up to date."""
        self._built.remove(retired)
        rows = added & _ROW_MASK
        self._built.add(self._vecs[rows], added)
        self._changes_since_build += len(retired) + len(added)
        if self._journal is not None:
            self._journal.retired.append(retired)
            self._journal.added.append(added)

    def _replay(self, new: BuiltIndex, journal: _Journal, snapshot_fids: np.ndarray) -> None:
        """Applies to `new` (built from snapshot_fids) the writes recorded during the build."""
        if journal.retired:
            retired = np.concatenate(journal.retired)
            new.remove(retired[np.isin(retired, snapshot_fids)])
        if journal.added:
            added = np.concatenate(journal.added)
            rows = added & _ROW_MASK
            current = self._live[rows] & (self._gen[rows] == added >> _ROW_BITS)
            new.add(self._vecs[rows[current]], added[current])

    # ----- validation --------------------------------------------------------------------

    def _checked(self, x: np.ndarray, what: str) -> np.ndarray:
        """(N, D) finite non-zero rows -> unit float32 rows, or ValueError."""
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (N, {self.dim}), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise ValueError(f"{what} must be real numbers, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            raise ValueError(f"{what} row {bad} has NaN or infinite values")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if len(arr) and not (norms > 0).all():
            raise ValueError(f"{what} row {int(np.flatnonzero(norms == 0)[0])} is all zeros")
        return arr / norms if len(arr) else arr

    @staticmethod
    def _checked_ids(user_ids: Sequence[str]) -> list[str]:
        if isinstance(user_ids, str | bytes):
            raise ValueError("user_ids must be a sequence of strings, not one string")
        ids = list(user_ids)
        for u in ids:
            if not isinstance(u, str) or not u:
                raise ValueError(f"user ids must be non-empty strings, got {u!r}")
        return ids
