"""An event log held as token arrays: what training, `persona encode` and `persona eval` read.

A log of millions of events does not fit in memory as Python objects (~0.5 KB an `Event`);
as arrays it costs ~60 bytes an event. `build_log` streams events once (in any order),
tokenizes each with the model's `Tokenizer`, drops duplicate event ids per user (the last
one in the stream wins, as `group_by_user` does) and sorts every user's events into window
order: ``(ts_ms, event_id)``, the order the store keeps, so events sharing a timestamp
(day-resolution logs) keep a stable order that is the same in training and in serving.

Example: events ``u1@5 e2, u2@1 e1, u1@5 e1`` give ``users=[u1, u2]``, ``offsets=[0, 2, 3]``,
``ts=[5, 5, 1]`` with u1's ``e1`` before ``e2``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from contract.events import Event
from encoder.tokenizer import TokenBatch, Tokenizer, assemble

CHUNK = 200_000
TOKENIZE_EVERY = 16_384  # events tokenised together (`Tokenizer.static_matrix`)


@dataclass
class EventLog:
    """Per-user event arrays, users contiguous, each user's events in window order.

    Attributes:
        users: (U,) user ids, in first-seen order.
        offsets: (U+1,) user u's events are rows ``offsets[u]:offsets[u+1]``.
        ts: (N,) int64 event times.
        static: (N, S) int32 static token ids (`Tokenizer.static_ids`).
        numbers: (N, M) float32 raw values of the spec's numeric properties (NaN: absent).
        raw: a few users' newest events as `Event`s (the parity sample), by user id.
    """

    users: list[str]
    offsets: np.ndarray
    ts: np.ndarray
    static: np.ndarray
    numbers: np.ndarray
    raw: dict[str, list[Event]] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return len(self.ts)

    @property
    def start_ms(self) -> int:
        return int(self.ts.min()) if len(self.ts) else 0

    @property
    def end_ms(self) -> int:
        return int(self.ts.max()) if len(self.ts) else 0

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def positions(self, users: np.ndarray, nows: np.ndarray, strict: bool) -> np.ndarray:
        """Row index of the first event of each user after ``now`` (at or after, if
        `strict`: then the rows before it are exactly the events with ``ts < now``).

        users: (B,) user indices, nows: (B,) int64 -> (B,) int64 rows."""
        side: Literal["left", "right"] = "left" if strict else "right"
        out = np.empty(len(users), dtype=np.int64)
        for k, (u, now) in enumerate(zip(users.tolist(), nows.tolist(), strict=True)):
            lo, hi = int(self.offsets[u]), int(self.offsets[u + 1])
            out[k] = lo + int(np.searchsorted(self.ts[lo:hi], now, side=side))
        return out

    def window_bounds(
        self,
        users: np.ndarray,
        nows: np.ndarray,
        max_events: int,
        strict: bool = False,
        horizon_ms: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) rows of each user's window at ``now``: at most `max_events` events, and
        when `horizon_ms` is given none older than ``horizon_ms`` before the window's newest
        event, as the store trims (`services/store`): a user idle since long ago keeps the
        last stretch of activity, not an empty window."""
        hi = self.positions(users, nows, strict)
        return self.window_start(users, hi, max_events, horizon_ms), hi

    def window_start(
        self, users: np.ndarray, hi: np.ndarray, max_events: int, horizon_ms: int | None = None
    ) -> np.ndarray:
        """First row of each user's window ending before row ``hi[b]``: at most `max_events`
        events, none older than `horizon_ms` before the newest (row ``hi - 1``), as the store
        trims. At most ``hi`` (an empty window starts where it ends)."""
        first = self.offsets[users]
        lo = np.maximum(first, hi - max_events)
        if horizon_ms is not None:
            newest = self.ts[np.maximum(hi - 1, first)]  # an empty window's first row: any
            oldest = self.positions(users, newest - horizon_ms, strict=True)
            lo = np.maximum(lo, oldest)
        return np.minimum(lo, hi)

    def token_batch(
        self, lo: np.ndarray, hi: np.ndarray, nows: np.ndarray, tok: Tokenizer
    ) -> TokenBatch:
        """The windows ``rows lo[b]:hi[b]`` as a `TokenBatch` encoded at ``nows[b]``."""
        rows = ranges(lo, hi)
        edges = np.asarray(tok.config.duration_edges_ms, dtype=np.int64)
        return assemble(self.static[rows], self.ts[rows], hi - lo, nows, edges)


def ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(lo[b], hi[b])`` for all b, without a Python loop."""
    lengths = (hi - lo).astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return np.repeat(lo.astype(np.int64) - starts, lengths) + np.arange(total, dtype=np.int64)


class _Chunks:
    """Column buffers flushed to numpy every `CHUNK` events."""

    def __init__(self, tok: Tokenizer, numeric_names: Sequence[str]) -> None:
        self.tok = tok
        self.names = list(numeric_names)
        self.cols: dict[str, list[np.ndarray]] = {k: [] for k in ("u", "t", "e", "s", "n")}
        self._reset()

    def _reset(self) -> None:
        self.u: list[int] = []
        self.t: list[int] = []
        self.e: list[bytes] = []
        self.pending: list[Event] = []  # not yet tokenised (a batch at a time: columnar)
        self.rows: list[np.ndarray] = []
        self.n: list[list[float]] = []

    def add(self, uidx: int, e: Event) -> None:
        self.u.append(uidx)
        self.t.append(e.ts_ms)
        self.e.append(e.event_id.encode("utf-8", "surrogatepass"))
        self.pending.append(e)
        if len(self.pending) >= TOKENIZE_EVERY:
            self._tokenize()
        if self.names:
            p = e.props
            self.n.append([_num(p.get(k)) for k in self.names])
        if len(self.u) >= CHUNK:
            self.flush()

    def _tokenize(self) -> None:
        self.rows.append(self.tok.static_matrix(self.pending))
        self.pending = []

    def flush(self) -> None:
        if not self.u:
            return
        self._tokenize()
        s = self.tok.n_static
        self.cols["u"].append(np.asarray(self.u, dtype=np.int32))
        self.cols["t"].append(np.asarray(self.t, dtype=np.int64))
        self.cols["e"].append(np.asarray(self.e, dtype=np.bytes_))
        self.cols["s"].append(np.concatenate(self.rows).reshape(-1, s))
        m = len(self.names)
        n = np.asarray(self.n, dtype=np.float32) if m else np.zeros((len(self.u), 0), np.float32)
        self.cols["n"].append(n.reshape(len(self.u), m))
        self._reset()

    def cat(self, k: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate(self.cols[k]) if self.cols[k] else empty


def _num(v: object) -> float:
    return float(v) if isinstance(v, int | float) else float("nan")


def build_log(
    events: Iterable[Event],
    tok: Tokenizer,
    keep_raw: int = 0,
    numbers: bool = False,
) -> EventLog:
    """Stream `events` into an `EventLog` (see the module docstring).

    Args:
        tok: the model's tokenizer (its spec fixes the ids).
        keep_raw: keep the newest `max_events` raw events of the first `keep_raw` users
            seen (the parity sample).
        numbers: keep the raw values of the numeric properties (evaluation aggregates).
    """
    index: dict[str, int] = {}
    users: list[str] = []
    names = [n.name for n in tok.config.features.numeric] if numbers else []
    buf = _Chunks(tok, names)
    raw: dict[str, deque[Event]] = {}  # by user id
    cap = 2 * tok.config.max_events
    for e in events:
        u = index.get(e.user_id)
        if u is None:
            u = index[e.user_id] = len(users)
            users.append(e.user_id)
            if len(raw) < keep_raw:
                raw[e.user_id] = deque(maxlen=cap)
        buf.add(u, e)
        r = raw.get(e.user_id)
        if r is not None:
            r.append(e)
    buf.flush()
    s = tok.n_static
    uid = buf.cat("u", np.zeros(0, np.int32))
    ts = buf.cat("t", np.zeros(0, np.int64))
    eid = buf.cat("e", np.zeros(0, np.bytes_))
    static = buf.cat("s", np.zeros((0, s), np.int32))
    nums = buf.cat("n", np.zeros((0, len(names)), np.float32))
    del buf
    # duplicates: same user and event id; the last one in the stream wins
    pos = np.arange(len(ts))
    o = np.lexsort((pos, eid, uid))
    dup = np.zeros(len(o), dtype=bool)
    if len(o) > 1:
        dup[:-1] = (uid[o[:-1]] == uid[o[1:]]) & (eid[o[:-1]] == eid[o[1:]])
    keep = np.sort(o[~dup])
    order = keep[np.lexsort((eid[keep], ts[keep], uid[keep]))]
    counts = np.bincount(uid[order], minlength=len(users))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    kept_raw: dict[str, list[Event]] = {}
    for user, dq in raw.items():
        by_id = {e.event_id: e for e in dq}
        kept_raw[user] = sorted(by_id.values(), key=Event.sort_key)[-tok.config.max_events :]
    return EventLog(
        users=users,
        offsets=offsets,
        ts=ts[order],
        static=static[order],
        numbers=nums[order],
        raw=kept_raw,
    )
