"""The stores in memory: `MemoryWindows` here and `MemoryVectors` (memory_vectors.py)
implement the same Protocols as the Valkey / Redis stores (`protocols.Windows`,
`protocols.Vectors`) with the rules of their Lua scripts (apply.lua, write_vectors.lua,
set_active.lua) in plain Python, on one process's dicts. For tests and tools that want the
real behaviour without a server; the contract suite (tests/store/) runs the same tests
against these and both Valkey set-ups.

What they leave out: TTLs (nothing expires), persistence, other processes.

Example, max_events=2: e1@1, e2@3, e3@2 applied at offsets 0, 1, 2 give the window
[e3@2, e2@3] (e1, the oldest, is trimmed); the same offsets again change nothing::

    windows = MemoryWindows(WindowConfig(max_events=2))
    vectors = MemoryVectors(windows)   # memory_vectors.py; clears `windows`' dirty marks
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from contract.record import unpack_record
from services.config import WindowConfig
from services.store import layout
from services.store.windows import ApplyResult, PackedUpdate, Window

_EVENT = struct.Struct("<qqH")  # offset, ts_ms, len(event id): layout.pack_update
_U16 = struct.Struct("<H")


@dataclass
class _User:
    records: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # eid -> (ts, rec)
    offsets: dict[str, int] = field(default_factory=dict)  # source label -> last offset
    version: int = 0
    forgot_at: int = -1  # meta `x`: events at or before it are refused (forget.lua)
    forgot_version: int = 0  # meta `xv`: vectors of an earlier window are refused
    owed: bool = False  # meta `xp`: the update log's tombstones are owed


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

    def read(self, user_ids: Sequence[str], newest: int | None = None) -> list[Window]:
        out = []
        keep = None if newest is None else -max(1, newest)
        with self._lock:
            for uid in user_ids:
                st = self._users.get(uid)
                if st is None:
                    out.append(Window(uid, 0, []))
                    continue
                order = sorted(st.records.items(), key=lambda kv: (kv[1][0], kv[0]))
                order = order if keep is None else order[keep:]
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
                version=ver, forgot_at=max(at_ms, st.forgot_at), forgot_version=ver, owed=True
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

    def owed(self, count: int = 1000) -> Iterator[list[str]]:
        """As `StoreForgetter.pending`."""
        with self._lock:
            ids = [u for u, st in self._users.items() if st.owed]
        for lo in range(0, len(ids), count):
            yield ids[lo : lo + count]

    def owe(self, user_id: str) -> None:
        """A vector refused as forgotten (write_vectors.lua sets `xp` then)."""
        with self._lock:
            if user_id in self._users:
                self._users[user_id].owed = True

    def settle(self, user_ids: Sequence[str]) -> None:
        """As `StoreForgetter.tombstoned`."""
        with self._lock:
            for u in user_ids:
                if u in self._users:
                    self._users[u].owed = False

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
