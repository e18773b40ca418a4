"""The stores in memory: `MemoryWindows` and `MemoryVectors` implement the same Protocols as
the Valkey / Redis stores (`protocols.Windows`, `protocols.Vectors`) with the rules of their
Lua scripts (apply.lua, write_vectors.lua, set_active.lua) in plain Python, on one process's
dicts. For tests and tools that want the real behaviour without a server; the contract
suite (tests/store/) runs the same tests against these and both Valkey set-ups.

What they leave out: TTLs (nothing expires), persistence, other processes.

Example, max_events=2: e1@1, e2@3, e3@2 applied at offsets 0, 1, 2 give the window
[e3@2, e2@3] (e1, the oldest, is trimmed); the same offsets again change nothing::

    windows = MemoryWindows(WindowConfig(max_events=2))
    vectors = MemoryVectors(windows)   # clears the dirty marks `windows` keeps
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from contract.record import unpack_record
from contract.versions import check_version
from services.config import WindowConfig
from services.store import layout
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
from services.store.windows import ApplyResult, PackedUpdate, Window

_EVENT = struct.Struct("<qqH")  # offset, ts_ms, len(event id): layout.pack_update
_U16 = struct.Struct("<H")
_HEAD = struct.Struct("<qq")  # computed_at_ms, window_version at byte 4 of a vector record
_HISTORY_MAX = 16  # versions kept on the rollback history (set_active.lua)


@dataclass
class _User:
    records: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # eid -> (ts, rec)
    offsets: dict[str, int] = field(default_factory=dict)  # source label -> last offset
    version: int = 0
    forgot_at: int = -1  # meta `x`: events at or before it are refused (forget.lua)
    forgot_version: int = 0  # meta `xv`: vectors of an earlier window are refused


class MemoryWindows:
    """`protocols.Windows` in memory, by apply.lua's rules. Thread-safe."""

    def __init__(self, cfg: WindowConfig) -> None:
        self.cfg = cfg
        self._users: dict[str, _User] = {}  # users with a meta hash (an update went in)
        self._dirty: dict[str, int] = {}  # uid -> dirty ts (ZADD NX: the first one stays)
        self._lock = threading.Lock()

    def apply_packed(
        self, updates: Iterable[PackedUpdate], rebuild: bool = False,
        states: layout.StateSpec | None = None,
    ) -> ApplyResult:  # fmt: skip
        """apply.lua's window rules; no short-term state (`states` is ignored: the serving
        read over this store folds the window's events, LAYOUT.md)."""
        total = ApplyResult()
        with self._lock:
            for u in updates:
                self._apply(u, rebuild, total)
        return total

    def _apply(self, u: PackedUpdate, rebuild: bool, total: ApplyResult) -> None:
        st = self._users.get(u.user_id) or _User()
        label = str(u.source)
        pos = st.offsets.get(label, -1)
        top, seen, newest_added = pos, set(), None
        for off, ts, eid, rec in _events(u.blob):
            if off <= pos and not rebuild:
                total.replayed += 1
                continue
            top = max(top, off)
            if ts <= st.forgot_at:
                total.forgotten += 1
                continue
            if eid in st.records or eid in seen:
                total.duplicate += 1
                continue
            seen.add(eid)
            st.records[eid] = (ts, rec)
            total.applied += 1
            newest_added = ts if newest_added is None else max(newest_added, ts)
        if newest_added is not None:
            total.trimmed += self._trim(st)
            st.version += 1
            self._dirty.setdefault(u.user_id, newest_added)
            total.window_lengths.append(len(st.records))
        if top > pos:
            st.offsets[label] = top
            self._users[u.user_id] = st

    def _trim(self, st: _User) -> int:
        """Drop events older than the newest minus the horizon, then the oldest beyond
        max_events, in window order (ts, event id bytes). Returns how many went."""
        newest = max(ts for ts, _ in st.records.values())
        order = sorted(st.records, key=lambda e: (st.records[e][0], e))
        keep = [e for e in order if st.records[e][0] >= newest - self.cfg.horizon_ms]
        keep = keep[-self.cfg.max_events :]
        gone = len(st.records) - len(keep)
        st.records = {e: st.records[e] for e in keep}
        return gone

    def read(self, user_ids: Sequence[str]) -> list[Window]:
        out = []
        with self._lock:
            for uid in user_ids:
                st = self._users.get(uid)
                if st is None:
                    out.append(Window(uid, 0, []))
                    continue
                order = sorted(st.records.items(), key=lambda kv: (kv[1][0], kv[0]))
                events = [unpack_record(uid, e.decode("utf-8"), rec) for e, (_, rec) in order]
                out.append(Window(uid, st.version, events))
        return out

    def offsets(self, user_id: str, topic_id: str | None = None) -> Mapping[int, int]:
        """As `WindowStore.offsets`: per partition of the topic incarnation `topic_id`."""
        with self._lock:
            st = self._users.get(user_id)
            labels = dict(st.offsets) if st else {}
        out = {}
        for label, off in labels.items():
            part, _, tid = label.partition("@")
            if (tid or None) == topic_id:
                out[int(part)] = off
        return out

    def window_version(self, user_id: str) -> int:
        """The meta `v` of one user (0: none), as write_vectors.lua compares it."""
        with self._lock:
            st = self._users.get(user_id)
            return st.version if st else 0

    def forgotten_version(self, user_id: str) -> int:
        """The meta `xv` of one user (0: never forgotten), as write_vectors.lua reads it."""
        with self._lock:
            st = self._users.get(user_id)
            return st.forgot_version if st else 0

    def forget_user(self, user_id: str, at_ms: int, before_ms: int | None) -> tuple[int, ...]:
        """forget.lua's window part: its reply {forgotten, window, 0, dirty}."""
        with self._lock:
            st = self._users.get(user_id) or _User()
            if before_ms is not None:
                if not st.records or max(ts for ts, _ in st.records.values()) >= before_ms:
                    return (0, 0, 0, 0)
                at_ms = max(ts for ts, _ in st.records.values())
            had = int(bool(st.records))
            ver = st.version + 1
            self._users[user_id] = _User(
                version=ver, forgot_at=max(at_ms, st.forgot_at), forgot_version=ver
            )
            return (1, had, 0, int(self._dirty.pop(user_id, None) is not None))

    def inactive(self, before_ms: int, count: int = 1000) -> Iterator[list[str]]:
        """As `StoreForgetter.inactive`."""
        with self._lock:
            ids = [
                u
                for u, st in self._users.items()
                if st.records and max(ts for ts, _ in st.records.values()) < before_ms
            ]
        for lo in range(0, len(ids), count):
            yield ids[lo : lo + count]

    def clear_dirty(self, user_id: str) -> None:
        with self._lock:
            self._dirty.pop(user_id, None)

    def dirty_count(self, buckets: Collection[int] | None = None) -> int:
        with self._lock:
            if buckets is None:
                return len(self._dirty)
            return sum(1 for uid in self._dirty if layout.bucket(uid) in buckets)

    def oldest_dirty(
        self, per_bucket: int, buckets: Collection[int] | None = None
    ) -> list[tuple[str, int]]:
        by_bucket: dict[int, list[tuple[int, bytes, str]]] = {}
        with self._lock:
            for uid, ts in self._dirty.items():
                b = layout.bucket(uid)
                if buckets is None or b in buckets:
                    by_bucket.setdefault(b, []).append((ts, uid.encode(), uid))
        out = [
            (uid, ts) for marks in by_bucket.values() for ts, _, uid in sorted(marks)[:per_bucket]
        ]
        out.sort(key=lambda p: (p[1], p[0]))
        return out

    def users(self, count: int = 1000) -> Iterator[str]:
        with self._lock:
            ids = list(self._users)
        yield from ids

    def close(self) -> None:
        pass


def _events(blob: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(offset, ts_ms, event id, record) of each event in an apply.lua argument."""
    p = 0
    while p < len(blob):
        off, ts, n = _EVENT.unpack_from(blob, p)
        p += _EVENT.size
        eid = blob[p : p + n]
        p += n
        (rlen,) = _U16.unpack_from(blob, p)
        p += _U16.size
        yield off, ts, eid, blob[p : p + rlen]
        p += rlen


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
                for v in u.vectors:
                    self._put(v, res)
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

    def drop_user(self, user_id: str) -> int:
        """forget.lua's vector part: delete the user's lists of every version."""
        with self._lock:
            keys = [k for k in self._lists if k[1] == user_id]
            for k in keys:
                del self._lists[k]
            return len(keys)

    def _put(self, v: StoredVector, res: WriteResult) -> None:
        if self.windows and v.window_version < self.windows.forgotten_version(v.user_id):
            res.forgotten.append((v.user_id, v.model_version))
            return
        rec = pack_vector(v, self.dtype)
        vals = self._lists.setdefault((v.model_version, v.user_id), [])
        if vals:
            head_ts, head_wv = _HEAD.unpack_from(vals[0], 4)
            if head_wv > v.window_version:
                res.skipped += 1
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
