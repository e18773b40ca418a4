"""What the refresh benchmarks share: synthetic users' windows written into the store."""

from __future__ import annotations

from contract.events import Event
from contract.record import pack_record
from encoder.synthetic import SyntheticConfig, generate
from encoder.train import group_by_user
from services.store.layout import pack_update
from services.store.windows import PackedUpdate, WindowStore


def load_windows(ws: WindowStore, users: int, per_user: float, seed: int) -> dict[str, Event]:
    """Writes the users' windows; returns each user's newest event."""
    ds = generate(SyntheticConfig(users=users, events_per_user=per_user, seed=seed))
    by_user = group_by_user(ds.events)
    ups = [
        PackedUpdate(u, 0, b"".join(
            pack_update(off, ev.event_id.encode(), ev.ts_ms, pack_record(ev))
            for off, ev in enumerate(evs)
        ))
        for u, evs in by_user.items()
    ]  # fmt: skip
    for i in range(0, len(ups), 500):
        ws.apply_packed(ups[i : i + 500])
    return {u: evs[-1] for u, evs in by_user.items()}
