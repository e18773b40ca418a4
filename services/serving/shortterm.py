"""The short-term head at request time (issue #17): what the events since the last refresh
add to a served vector.

Each model version may carry a head (`encoder.shortterm.ShortTermHead`, trained and saved
with the encoder). `RegistryHeads` (services/common/heads.py) loads a version's head from
the registry once, checks it against its parity sample there, and keeps it: the head is per
version, so a response read under one version gets that version's head, and a cutover
switches head and vectors together. `fold` adds the head's output for the users with events
after their vector's marker (LAYOUT.md, vector layout 3; read in the same store round trip
as the vectors, `VectorStore.read_recent`: their rows from the short-term state ingest
keeps, or the events themselves).

Example: a user whose stored vector z folded in events up to (ts 100, "e7"), and who has
since had events e8, e9: the combined row is z + head.delta(z, [[e8, e9]]), its
`head_events` 2 and `newest_event_ms` e9's time; with no event since, the row is z and its
newest event is the marker's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.common.heads import Head, HeadSource, RegistryHeads
from services.store.recent import Recent

__all__ = ["PARTS", "Folded", "Head", "HeadSource", "Part", "RegistryHeads", "fold"]

Part = Literal["default", "nearline", "short_term", "combined"]
PARTS: tuple[Part, ...] = ("default", "nearline", "short_term", "combined")


@dataclass(frozen=True, slots=True)
class Folded:
    """The head's part of a response: (N, D) short-term rows (zeros where no event was
    folded), (N,) events folded per row, (N,) ts_ms of the newest folded event (0: none)."""

    short: np.ndarray
    events: np.ndarray
    newest_ms: np.ndarray
    from_state: int = 0  # rows whose new events came from the short-term state
    from_window: int = 0  # ... from the window (read by script)


def fold(head: Head, nearline: np.ndarray, found: np.ndarray, recent: Recent) -> Folded:
    """The head's output for the `found` rows ((N,) bool) of `nearline` (N, D) with new
    events in `recent` (per row: the events after the marker, oldest first, or their rows
    from the short-term state; a row has one source or none); one `delta_rows` call."""
    n = nearline.shape[0]
    ev_len = np.minimum(np.fromiter(map(len, recent.events), np.int64, n), head.max_events)
    ev_len[~found] = 0
    st_len = np.where(found, recent.lengths, 0)
    lengths = ev_len + st_len
    newest = np.where(st_len > 0, recent.newest_ms, 0)
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
    return Folded(head.delta_rows(nearline, u, lengths), lengths.astype(np.int32), newest,
                  int(np.count_nonzero(st_len)), int(np.count_nonzero(ev_len)))  # fmt: skip
