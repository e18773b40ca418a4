"""Plain-Python model of the window rules in `apply.lua`: the ground truth for tests.

It keeps, per user, the events and the last applied offset per partition, and applies the
exact rules of the script: replay skip by offset, dedup by event id, trim by horizon from the
newest event, then by count, oldest `(ts_ms, event_id)` first.

Example, max_events=2: events e1@t=1, e2@t=3, e3@t=2 arrive at offsets 0, 1, 2; the window is
[e3@2, e2@3] (e1 is the oldest and is trimmed); replaying offsets 0..2 changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from contract.events import Event
from services.config import WindowConfig


@dataclass
class _UserState:
    events: dict[str, Event] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    version: int = 0


class ReferenceWindows:
    def __init__(self, cfg: WindowConfig) -> None:
        self.cfg = cfg
        self.users: dict[str, _UserState] = defaultdict(_UserState)

    def apply(self, partition: int, offset: int, ev: Event) -> str:
        """Apply one record; returns 'applied', 'duplicate' or 'replayed'."""
        st = self.users[ev.user_id]
        if offset <= st.offsets.get(partition, -1):
            return "replayed"
        st.offsets[partition] = offset
        if ev.event_id in st.events:
            return "duplicate"
        st.events[ev.event_id] = ev
        newest = max(e.ts_ms for e in st.events.values())
        kept = sorted(
            (e for e in st.events.values() if e.ts_ms >= newest - self.cfg.horizon_ms),
            key=Event.sort_key,
        )[-self.cfg.max_events :]
        st.events = {e.event_id: e for e in kept}
        st.version += 1
        return "applied"

    def apply_all(self, records: Iterable[tuple[int, int, Event]]) -> None:
        """records: (partition, offset, event) in each partition's offset order."""
        for p, o, ev in records:
            self.apply(p, o, ev)

    def window(self, user_id: str) -> list[Event]:
        st = self.users.get(user_id)
        return sorted(st.events.values(), key=Event.sort_key) if st else []
