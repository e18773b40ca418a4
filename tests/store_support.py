"""Windows written from `Event`s, for tests: the ingest hot path packs records straight from
the wire (`contract.codec.decode_for_store`), tests start from events.

Example::

    apply_events(store, [UserUpdate("u1", 0, [(0, Event("u1", "e1", 5, "view"))])])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from contract.events import Event
from contract.record import pack_record
from services.store.layout import pack_update
from services.store.protocols import Windows
from services.store.windows import ApplyResult, PackedUpdate


@dataclass(frozen=True, slots=True)
class UserUpdate:
    """Events of one user from one partition, in offset order: [(offset, event), ...].

    `source` names the partition's incarnation (`services.store.windows.source_label`).
    """

    user_id: str
    source: str | int
    events: Sequence[tuple[int, Event]]


def pack_updates(events: Sequence[tuple[int, Event]]) -> bytes:
    """[(offset, event), ...] -> the per-user argument of apply.lua."""
    return b"".join(
        pack_update(off, ev.event_id.encode("utf-8"), ev.ts_ms, pack_record(ev))
        for off, ev in events
    )


def packed(updates: Iterable[UserUpdate]) -> list[PackedUpdate]:
    return [PackedUpdate(u.user_id, u.source, pack_updates(u.events)) for u in updates if u.events]


def apply_events(store: Windows, updates: Iterable[UserUpdate]) -> ApplyResult:
    """Apply updates atomically per user; idempotent under replay of the same offsets."""
    return store.apply_packed(packed(updates))
