"""Folding the short-term head's input into vectors (issue #17): the head's output for the
users with events after their vector's marker, from whichever source `read_recent` found
(ingest's delta, the short-term state's rows, the window's events). Serving adds it to the
vectors it returns (`services/serving/shortterm.py`); ingest computes it after its APPLY and
stores it as the user's delta (`services/ingest/states.py`, `deltas.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.heads import Head
from services.store.recent import Recent


@dataclass(frozen=True, slots=True)
class Folded:
    """The head's part of a response: (N, D) short-term rows (zeros where no event was
    folded), (N,) events folded per row, (N,) ts_ms of the newest folded event (0: none)."""

    short: np.ndarray
    events: np.ndarray
    newest_ms: np.ndarray
    from_state: int = 0  # rows whose new events came from the short-term state
    from_window: int = 0  # ... from the window (read by script)
    from_delta: int = 0  # ... folded by ingest already (its delta)

    def take(self, pos: np.ndarray) -> Folded:
        """The rows at `pos` ((K,) indices, repeats allowed), the counts as they are."""
        return Folded(self.short[pos], self.events[pos], self.newest_ms[pos], self.from_state,
                      self.from_window, self.from_delta)  # fmt: skip


def fold(head: Head, nearline: np.ndarray, found: np.ndarray, recent: Recent) -> Folded:
    """The head's output for the `found` rows ((N,) bool) of `nearline` (N, D) with new
    events in `recent` (per row: ingest's delta, or the events after the marker, oldest
    first, or their rows from the short-term state; a row has one source or none); one
    `delta_rows` call for the rows without a delta."""
    n = nearline.shape[0]
    ev_len = np.minimum(np.fromiter(map(len, recent.events), np.int64, n), head.max_events)
    ev_len[~found] = 0
    st_len = np.where(found, recent.lengths, 0)
    d_n = np.zeros(n, np.int32) if recent.delta_n is None else np.where(found, recent.delta_n, 0)
    lengths = ev_len + st_len + d_n  # a row has one source: these add to its events
    # the state's and the deltas' newest times come with them; the windows' below
    newest = np.where((st_len > 0) | (d_n > 0), recent.newest_ms, 0)
    counts = [int(np.count_nonzero(x)) for x in (st_len, ev_len, d_n)]
    if not lengths.any():
        return Folded(np.zeros_like(nearline), lengths.astype(np.int32), newest)
    u = recent.rows if found.all() else recent.rows[np.repeat(found, recent.lengths)]
    if ev_len.any():  # users read from their windows: their events' rows, merged in
        by_events = np.flatnonzero(ev_len).tolist()
        m = head.max_events
        rows = head.event_rows([e for i in by_events for e in recent.events[i][-m:]])
        owner = np.concatenate([np.repeat(np.arange(n), st_len), np.repeat(np.arange(n), ev_len)])
        u = np.concatenate([u.reshape(-1, rows.shape[1]), rows])[np.argsort(owner, kind="stable")]
        for i in by_events:
            newest[i] = recent.events[i][-1].ts_ms
    short = head.delta_rows(nearline, u, lengths - d_n)
    if counts[2]:  # ingest folded these already
        assert recent.deltas is not None
        moved = d_n > 0
        short[moved] = recent.deltas[moved]
    return Folded(short, lengths.astype(np.int32), newest, *counts)
