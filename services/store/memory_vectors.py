"""`MemoryVectors`: `protocols.Vectors` in memory (see memory.py for the pair)."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Collection, Iterable, Sequence

from contract.versions import check_version
from services.store import layout
from services.store.layout import NO_RESCORE
from services.store.memory import MemoryWindows
from services.store.records import (
    Dtype,
    StoredVector,
    VectorBatch,
    decode_batch,
    pack_vector,
    unpack_vector,
)
from services.store.router import DeadlineReached
from services.store.vectors import STATES, CutoverError, UserWrite, WriteResult

_HEAD = struct.Struct("<qq")  # computed_at_ms, window_version at byte 4 of a vector record
_HISTORY_MAX = 16  # versions kept on the rollback history (set_active.lua)


class MemoryVectors:
    """`protocols.Vectors` in memory, by write_vectors.lua's and set_active.lua's rules.

    Args:
        windows: whose dirty marks a write clears (None: a write asked to clear one
            finds no window, version 0, as on a store without it).
        history, dtype: as `VectorStore`. There is no TTL.
    """

    def __init__(
        self, windows: MemoryWindows | None = None, history: int = 4, dtype: Dtype = "float32"
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.windows = windows
        self.history = history
        self.dtype: Dtype = dtype
        self._lists: dict[tuple[str, str], list[bytes]] = {}  # (version, uid), newest first
        self._states: dict[str, str] = {}
        self._active: str | None = None
        self._history: list[str] = []
        self._seen: str | None = None
        self._backfilled: dict[str, set[int]] = {}
        self._columns: dict[str, str] = {}  # version -> score columns JSON
        self._rescore: dict[str, int] = {}  # uid -> rescore time ms (the rescore sets)
        self._lock = threading.Lock()

    def active_version(self) -> str | None:
        return self._active

    def versions(self) -> dict[str, str]:
        with self._lock:
            return dict(self._states)

    def history_versions(self) -> list[str]:
        with self._lock:
            return list(self._history)

    def set_state(self, version: str, state: str) -> None:
        if state not in STATES or state == "active":
            raise ValueError(f"state must be one of backfilling/ready/retired, got {state!r}")
        with self._lock:
            if state == "retired" and self._active == version:
                raise CutoverError(f"{version} is active; promote another version first")
            self._states[check_version(version)] = state

    def set_active(self, version: str, require: str = "") -> str | None:
        with self._lock:
            return self._flip(check_version(version), "push", require)

    def rollback(self) -> tuple[str | None, str]:
        with self._lock:
            if not self._history:
                raise CutoverError("no earlier active version to roll back to")
            target = self._history[0]
            return self._flip(target, "pop", ""), target

    def _flip(self, v: str, mode: str, need: str) -> str | None:
        state = self._states.get(v)
        if need and state != need and state != "active":
            raise CutoverError(f"version {v} is {state or 'nil'}, not {need}")
        if state == "retired":
            raise CutoverError(f"version {v} is retired")
        old = self._active
        if mode == "pop":
            if not self._history or self._history[0] != v:
                raise CutoverError(f"rollback target {v} is not the history head")
            self._history.pop(0)
        if old == v:
            return old
        if old is not None:
            self._states[old] = "ready"
            if mode == "push":
                self._history = [old, *self._history][:_HISTORY_MAX]
        self._states[v] = "active"
        self._active = v
        return old

    def registry_seen(self) -> str | None:
        return self._seen

    def set_score_columns(self, version: str, columns_json: str) -> None:
        self._columns[check_version(version)] = columns_json

    def score_columns(self, version: str) -> str | None:
        return self._columns.get(version)

    def set_registry_seen(self, version: str) -> None:
        self._seen = version

    def backfilled(self, version: str) -> set[int]:
        with self._lock:
            return set(self._backfilled.get(check_version(version), ()))

    def mark_backfilled(self, version: str, buckets: Iterable[int]) -> None:
        with self._lock:
            self._backfilled.setdefault(check_version(version), set()).update(buckets)

    def reset_backfill(self, version: str) -> None:
        with self._lock:
            self._backfilled.pop(check_version(version), None)

    def write(self, users: Sequence[UserWrite]) -> WriteResult:
        for u in users:  # refused before anything is written, as the store does
            for v in u.vectors:
                check_version(v.model_version)
        res = WriteResult()
        with self._lock:
            for u in users:
                refused = len(res.forgotten)
                for v in u.vectors:
                    self._put(v, res)
                if u.rescore_at_ms is not None:
                    if u.rescore_at_ms == NO_RESCORE or len(res.forgotten) > refused:
                        self._rescore.pop(u.user_id, None)
                    else:
                        self._rescore[u.user_id] = u.rescore_at_ms
                if u.expect_window_version is None:
                    continue
                have = self.windows.window_version(u.user_id) if self.windows else 0
                if have == u.expect_window_version:
                    if self.windows is not None:
                        self.windows.clear_dirty(u.user_id)
                    res.cleared += 1
                else:
                    res.still_dirty += 1
        return res

    def due_rescores(
        self, per_bucket: int, now_ms: int, buckets: Collection[int] | None = None
    ) -> list[str]:
        with self._lock:
            due = sorted((t, u) for u, t in self._rescore.items() if t <= now_ms)
        taken: dict[int, int] = {}
        out = []
        for _, uid in due:
            b = layout.bucket(uid)
            if (buckets is None or b in buckets) and taken.get(b, 0) < per_bucket:
                taken[b] = taken.get(b, 0) + 1
                out.append(uid)
        return out

    def drop_user(self, user_id: str) -> int:
        """forget.lua's vector part: delete the user's lists of every version (and its
        rescore time)."""
        with self._lock:
            self._rescore.pop(user_id, None)
            keys = [k for k in self._lists if k[1] == user_id]
            for k in keys:
                del self._lists[k]
            return len(keys)

    def _put(self, v: StoredVector, res: WriteResult) -> None:
        if self.windows and v.window_version < self.windows.forgotten_version(v.user_id):
            res.forgotten.append((v.user_id, v.model_version))
            self.windows.owe(v.user_id)
            return
        rec = pack_vector(v, self.dtype)
        vals = self._lists.setdefault((v.model_version, v.user_id), [])
        if vals:
            head_ts, head_wv = _HEAD.unpack_from(vals[0], 4)
            if head_wv > v.window_version:
                res.stale.append((v.user_id, v.model_version))
                return
            res.replaced_computed_at_ms.append(head_ts)
            if head_wv == v.window_version:
                vals[0] = rec
                res.written += 1
                return
        vals.insert(0, rec)
        del vals[self.history :]
        res.written += 1

    def get_batch(
        self, user_ids: Sequence[str], version: str, history: int = 1
    ) -> list[list[StoredVector]]:
        n = max(1, history)
        return [
            [unpack_vector(uid, version, rec) for rec in recs]
            for uid, recs in zip(user_ids, self._records(user_ids, version, n), strict=True)
        ]

    def read_batch(
        self, user_ids: Sequence[str], version: str, history: int, deadline: float
    ) -> VectorBatch:
        if time.monotonic() >= deadline:
            raise DeadlineReached("the deadline passed before the read")
        return decode_batch(self._records(user_ids, version, max(1, history)), history)

    def _records(self, user_ids: Sequence[str], version: str, n: int) -> list[list[bytes]]:
        check_version(version)
        with self._lock:
            return [list(self._lists.get((version, uid), [])[:n]) for uid in user_ids]

    def close(self) -> None:
        pass
