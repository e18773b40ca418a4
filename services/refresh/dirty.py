"""Reading the dirty sets: oldest users first, and the backlog size."""

from __future__ import annotations

from typing import Any

from services.store import layout, sharded
from services.store.client import Client
from services.store.windows import dirty_count  # noqa: F401 - re-exported


def _pairs(raw: Any) -> list[tuple[bytes, float]]:
    """ZRANGE .. WITHSCORES as pairs, whether the client parsed them or not (RESP2/3)."""
    if not raw:
        return []
    if isinstance(raw[0], list | tuple):
        return [(m, float(s)) for m, s in raw]
    return [(raw[i], float(raw[i + 1])) for i in range(0, len(raw), 2)]


def oldest_dirty(client: Client, per_bucket: int) -> list[tuple[str, int]]:
    """Up to `per_bucket` oldest dirty users of every bucket, as (user id, dirty ts_ms),
    sorted oldest first. One pipelined read per shard."""
    keys = [layout.dirty_key(b) for b in range(layout.BUCKETS)]
    results = sharded.execute(
        client, [(k, ("ZRANGE", k, 0, per_bucket - 1, "WITHSCORES")) for k in keys]
    )
    out: list[tuple[str, int]] = []
    for r in results:
        if isinstance(r, Exception):
            raise r
        out += [(m.decode("utf-8"), int(s)) for m, s in _pairs(r)]
    out.sort(key=lambda p: (p[1], p[0]))
    return out
