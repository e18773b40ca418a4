"""LookalikeIndex: nearest users by cosine over L2-normalised vectors, kept current in place.

Rows. Each user holds a row number, and the faiss structure stores the user's unit vector
with that row as its id, so the hits of a whole batch map to users with one gather from the
row table (`rows.RowTable.ids`, whose last slot stays empty: faiss's -1 "no hit" maps to no
user). Where the structure removes ids (CPU flat and IVF) an update replaces the row's entry
and a freed row is reused at once. Where it cannot (HNSW, IVF-PQ, GPU) an update moves the
user to a new row, the old entry stays in the structure but maps to no user, and freed rows
wait until a rebuild has dropped their entries.

Storage. The faiss structure is the master copy of the vectors (see `_built.py`); IVF-PQ,
whose codes are lossy, keeps a float16 copy by row (`rows.RowCopy`). The row table keeps each
vector's length as given (the population prior's input, `prior.py`).

Example:
    >>> idx = LookalikeIndex(IndexConfig(dim=2))
    >>> idx.upsert(["a", "b"], np.array([[1, 0], [0.6, 0.8]], dtype=np.float32))
    >>> idx.search(np.array([[1, 0]], dtype=np.float32), k=2)
    [[('a', 1.0), ('b', 0.6...)]]

Concurrency. Searches take a shared lock; upserts, deletes and the swap at the end of a
rebuild take it exclusively. `rebuild()` copies the live vectors under the shared lock,
builds and measures its search setting on a small sample without any lock (searches and
upserts go on against the old index), then, under the exclusive lock, replays onto the new
index what changed meanwhile and swaps it in; the full sample is measured after, each of
its searches under the shared lock (`tuning.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from services.index._built import BuiltIndex, gpu_available
from services.index._rwlock import RWLock
from services.index.building import build
from services.index.config import COPY_KINDS, REMOVABLE_KINDS, IndexConfig, IndexKind
from services.index.filtered import filtered_search
from services.index.neighbours import EMPTY_SCORE, Neighbours, hit_lists
from services.index.rebuilding import BuildInfo, Journal, replay
from services.index.rows import RowTable, checked_ids, checked_vectors, unit_queries
from services.index.tuning import Tuner

log = logging.getLogger(__name__)

_new_tuple = tuple.__new__


def _neighbours(fields: tuple[np.ndarray, np.ndarray]) -> Neighbours:
    return _new_tuple(Neighbours, fields)  # C-level; NamedTuple's __new__ is Python


class LookalikeIndex:
    """Thread-safe user-id keyed ANN index; see the module docstring."""

    def __init__(self, config: IndexConfig | None = None) -> None:
        self.config = config or IndexConfig()
        self._dim = self.config.dim
        self._lock = RWLock()
        self._rebuild_lock = threading.Lock()
        self._gpu_res: Any | None = None
        if gpu_available(self.config):
            import faiss

            self._gpu_res = faiss.StandardGpuResources()
        # the kinds whose codes cannot give vectors back need a float16 copy from the start
        copy = self.config.large_kind(self._gpu_res is not None) in COPY_KINDS
        self._rows = RowTable(self._dim, with_copy=copy)
        self._journal: Journal | None = None
        self._changes_since_build = 0
        self._built = self._build(np.zeros((0, self._dim), np.float32), np.zeros(0, np.int64))[0]

    # ----- reads -------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def size(self) -> int:
        """Number of users held."""
        return len(self._rows)

    def __len__(self) -> int:
        return self.size

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and self._rows.get(user_id) is not None

    @property
    def kind(self) -> IndexKind:
        """The structure in use now (may lag the config's choice until `rebuild()`)."""
        return self._built.kind

    @property
    def on_gpu(self) -> bool:
        return self._built.on_gpu

    @property
    def built(self) -> BuiltIndex:
        """The faiss structure in service (for benchmarks and diagnostics; do not mutate)."""
        return self._built

    @property
    def changes_since_build(self) -> int:
        return self._changes_since_build

    def vector_of(self, user_id: str) -> np.ndarray | None:
        """A copy of the user's stored (unit) vector, or None."""
        with self._lock.read():
            row = self._rows.get(user_id)
            return None if row is None else self._built.reconstruct(np.array([row]))[0]

    def sum_of(self, user_ids: Iterable[str]) -> np.ndarray:
        """(D,) float64: the sum of the stored (unit) vectors of those of `user_ids` that
        have one (zeros if none do); one lock and one read-back for the whole list."""
        with self._lock.read():
            rows = self._held(user_ids)
            if not rows:
                return np.zeros(self._dim, np.float64)
            return self._built.reconstruct(np.asarray(rows)).sum(axis=0, dtype=np.float64)

    def length_sum_of(self, user_ids: Iterable[str]) -> float:
        """The sum of the lengths the vectors of those of `user_ids` held had when given."""
        with self._lock.read():
            rows = self._held(user_ids)
            return float(self._rows.lengths[rows].sum()) if rows else 0.0

    def live_vectors(self) -> np.ndarray:
        """A copy of every held unit vector (N, D), in no order (the live recall probe)."""
        with self._lock.read():
            return self._snapshot()[1]

    def _held(self, user_ids: Iterable[str]) -> list[int]:
        rows = self._rows.find(list(user_ids))
        return rows[rows >= 0].tolist()

    def memory(self) -> dict[str, int]:
        """Estimated bytes by part: `vectors` (the faiss structure: codes, ids, id map,
        coarse centroids), `copy` (IVF-PQ's float16 vectors), `ids` (user ids and their
        maps), `rows` (per-row lengths). Costs a walk of the IVF lists and a sample of ids.
        """
        with self._lock.read():
            out = {"vectors": self._built.structure_bytes(), **self._rows.bytes()}
        return out

    def _kind_for(self, n: int) -> IndexKind:
        """The structure a build over n vectors uses here (on this index's device)."""
        return self.config.kind_for(n, self._gpu_res is not None)

    def needs_rebuild(self) -> bool:
        """True when the structure no longer fits the data: the config wants another kind
        for this size, the size passed `rebuild_growth` times the built size, or too many
        hidden entries accumulated."""
        cfg, built, n = self.config, self._built, self.size
        if self._kind_for(n) != built.kind:
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
        """Nearest users for each query, best first, as (user_id, cosine) pairs: what
        `search_arrays` finds, with a str per hit (see `neighbours.py` for the cost).

        Returns:
            Q lists of up to k (user_id, cosine) pairs, highest cosine first.
        """
        users, scores = self._search(queries, k, exclude, min_score, as_str=True)
        return hit_lists(users.tolist(), scores)

    def search_arrays(
        self,
        queries: np.ndarray,
        k: int,
        exclude: set[str] | None = None,
        min_score: float | None = None,
    ) -> Neighbours:
        """Nearest users for each query, best first, as arrays (`neighbours.Neighbours`).

        Args:
            queries: (Q, D) vectors; normalised here, so any non-zero length works.
            k: results per query, at most.
            exclude: user ids never returned (e.g. the seed audience).
            min_score: drop results with cosine below this.
        """
        if not exclude and min_score is None and type(k) is int and k > 0:
            # The hot path, kept to as few Python steps as it can be: one normalisation,
            # the shared lock, faiss's C search, one gather of the ids.
            q = unit_queries(queries, self._dim)
            lock = self._lock
            lock.acquire_read()
            try:
                built = self._built
                if not built.n_stale and built.rerank == 1 and k <= built.fast_k:
                    scores, rows = built.search(q, k)
                    # np.take: half the time of fancy indexing on a bytes array (-1 -> the
                    # table's last entry, the empty id, as indexing gives)
                    return _neighbours((np.take(self._rows.ids, rows), scores))
            finally:
                lock.release_read()
        return Neighbours(*self._search(queries, k, exclude, min_score, as_str=False))

    def _search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: set[str] | None,
        min_score: float | None,
        as_str: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(hits (Q, k) from the str or the bytes id table, scores (Q, k))."""
        if type(k) is not int or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = unit_queries(queries, self._dim)
        self._lock.acquire_read()
        try:
            table = self._rows.ids
            built = self._built
            if exclude or built.n_stale or built.rerank > 1 or k > built.fast_k:
                banned = np.asarray(self._held(exclude or ()), dtype=np.int64)
                rows, scores = filtered_search(built, self._rows, q, k, banned, min_score)
            else:
                scores, rows = built.search(q, k)
            hits = np.take(table, rows)
        finally:
            self._lock.release_read()
        if min_score is not None:
            below = scores < min_score
            hits[below], scores[below] = table[-1], EMPTY_SCORE
        if as_str:  # the hits' str (None for the empty slots): only these are decoded
            return np.array([[h.decode() if h else None for h in row] for row in hits.tolist()],
                            dtype=object).reshape(hits.shape), scores  # fmt: skip
        return hits, scores

    # ----- writes ------------------------------------------------------------------------

    def upsert(self, user_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Sets each user's vector (normalised), replacing any earlier one.

        Args:
            user_ids: N non-empty strings; a repeated id keeps its last vector.
            vectors: (N, D) finite, non-zero.
        """
        ids = checked_ids(user_ids)
        vecs, lengths = checked_vectors(vectors, self._dim, "vectors")
        if len(ids) != len(vecs):
            raise ValueError(f"{len(ids)} user ids but {len(vecs)} vectors")
        if len(set(ids)) != len(ids):
            last = {u: i for i, u in enumerate(ids)}
            pick = list(last.values())
            ids, vecs, lengths = list(last), vecs[pick], lengths[pick]
        if not ids:
            return
        with self._lock.write():
            table = self._rows
            rows = table.find(ids)  # (N,) -1 where not held
            held = rows >= 0
            old = rows[held]
            if self._in_place():  # held users keep their rows; their entries are replaced
                moved = np.flatnonzero(~held)
            else:  # every user moves to a new row; the old entries stay hidden
                moved = np.arange(len(ids))
                if len(old):
                    again = [ids[i] for i in np.flatnonzero(held).tolist()]
                    table.release(table.forget(again), reuse_now=False)
            if len(moved) == len(ids):
                rows = table.assign(ids)
            elif len(moved):
                rows[moved] = table.assign([ids[i] for i in moved.tolist()])
            table.lengths[rows] = lengths
            self._apply(old, rows, vecs)

    def delete(self, user_ids: Iterable[str]) -> int:
        """Removes the users; unknown ids are ignored. Returns how many were removed."""
        with self._lock.write():
            rows = self._rows.forget(list(dict.fromkeys(user_ids)))
            if not rows:
                return 0
            self._rows.release(rows, reuse_now=self._in_place())
            self._apply(np.asarray(rows, dtype=np.int64), np.zeros(0, np.int64), None)
            return len(rows)

    def rebuild(self) -> BuildInfo:
        """Builds a fresh structure from the stored vectors and swaps it in atomically.

        Picks the kind for the current size, retrains IVF lists, drops hidden entries and
        chooses the search setting from the recall target: on `recall_sample_first` vectors
        before the swap, on `recall_sample` after it while the new structure serves
        (`tuning.py`). Searches and writes proceed throughout; writes made during the build
        are replayed onto the new structure before the swap. One rebuild runs at a time.
        """
        cfg = self.config
        with self._rebuild_lock:
            t0 = time.perf_counter()
            with self._lock.read():  # no writer runs, so the journal starts consistent
                rows, vecs = self._snapshot()
                removable = self._kind_for(len(rows)) in REMOVABLE_KINDS
                journal = Journal(removable and self._gpu_res is None, self._rows.pending)
                self._journal, self._rows.pending = journal, []
            try:
                new, tuner = self._build(vecs, rows)
                del vecs
                if tuner is not None:
                    tuner.install(tuner.measure(min(cfg.recall_sample_first, cfg.recall_sample)))
            except BaseException:  # a failed build leaves the old structure in place
                with self._lock.write():
                    self._rows.pending.extend(journal.releasing)
                    self._journal = None
                raise
            with self._lock.write():
                replay(new, journal, rows, self._rows, self._built)
                self._built, self._journal = new, None
                self._rows.free.extend(journal.releasing)
                self._changes_since_build = 0
            serving_s = time.perf_counter() - t0
            if tuner is not None and cfg.recall_sample > cfg.recall_sample_first:
                try:
                    tuner.install(tuner.measure(cfg.recall_sample, self._lock.read))
                except Exception:  # the new structure serves on with the first setting
                    log.exception("measuring the rebuilt index's recall on the full sample")
            del tuner
            info = self._build_info(new, time.perf_counter() - t0, serving_s)
        settings = "".join(
            f"; k={k}: setting {p}, recall {info.recall[k]:.3f}" for k, p in info.params.items()
        )
        log.info(
            "index rebuilt: %s over %d vectors, serving after %.2f s, setting measured after"
            " %.2f s%s%s",
            info.kind,
            info.size,
            info.serving_s,
            info.seconds,
            " on GPU" if info.on_gpu else "",
            settings,
        )
        return info

    @staticmethod
    def _build_info(new: BuiltIndex, seconds: float, serving_s: float) -> BuildInfo:
        cal = new.calibration
        return BuildInfo(
            new.kind,
            new.ntotal - new.n_stale,
            seconds,
            new.on_gpu,
            dict(cal.params) if cal else {},
            dict(cal.recall) if cal else {},
            serving_s,
            new.kmeans_iterations,
        )

    # ----- internals ---------------------------------------------------------------------

    def _build(self, vecs: np.ndarray, rows: np.ndarray) -> tuple[BuiltIndex, Tuner | None]:
        copy = self._rows.copy
        return build(self.config, vecs, rows, self._gpu_res, copy.gather if copy else None)

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """The live (rows (N,), unit vectors (N, D)) the index holds (caller: read lock)."""
        built = self._built
        if built.master is None:
            rows = self._rows.live_rows()
            return rows, built.reconstruct(rows)
        rows, vecs = built.snapshot()
        if not built.removable:
            live = self._rows.live(rows)
            rows, vecs = rows[live], vecs[live]
        return rows, vecs

    def _in_place(self) -> bool:
        """Whether an entry can be replaced under its row: every structure that holds or
        will hold it removes ids (caller: write lock)."""
        j = self._journal
        return self._built.removable and (j is None or j.removable)

    def _apply(self, retired: np.ndarray, added: np.ndarray, vecs: np.ndarray | None) -> None:
        """Brings the live structure (and a running rebuild's journal) up to date."""
        self._built.remove(retired)
        if vecs is not None:
            if self._rows.copy is not None:
                self._rows.copy.put(added, vecs)
            self._built.add(vecs, added)
        self._changes_since_build += len(retired) + len(added)
        if self._journal is not None:
            self._journal.retired.append(retired)
            self._journal.added.append(added)
