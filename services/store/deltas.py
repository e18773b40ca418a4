"""The short-term delta ingest computes (issue #17; LAYOUT.md "Short-term delta"): the head's
output for a user's events since its newest vector, stored in the user's meta hash (field
`d<ver>`), tagged with the vector's window version and the window version it covers.
Serving reads it with meta `v` in the round trip that reads the vectors and, when both tags
still hold, adds it: no state to parse, no matmul on the request path. When they do not
(an APPLY or a refresh since, ingest without the models, a version ingest does not keep),
serving folds the short-term state or the window itself (`services/store/recent.py`).

Example: ingest applied e8, e9 for u1 (window version 12) whose vector under v1 folded
events up to window version 10; it reads the vector and the state, computes delta =
head(z, [e8, e9]) and stores `d` = (10, 12, ts of e9, 2, delta) if meta `v` is still 12.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.store import layout
from services.store.router import StoreRouter
from services.store.scripts import ScriptCall, Scripts, node_chunks


def _dtype(dim: int) -> np.dtype:
    return np.dtype([("wv", "<i8"), ("v", "<i8"), ("newest", "<i8"), ("n", "<u4"),
                     ("dim", "<u4"), ("delta", "<f4", (dim,))])  # fmt: skip


def pack_deltas(
    wv: np.ndarray, v: np.ndarray, newest_ms: np.ndarray, events: np.ndarray, deltas: np.ndarray
) -> list[bytes]:
    """K users' `d<ver>` values: (K,) vector window versions, covered window versions,
    newest folded event times, events folded; (K, E) deltas."""
    k, dim = deltas.shape
    arr = np.zeros(k, _dtype(dim))
    arr["wv"], arr["v"], arr["newest"], arr["n"], arr["dim"] = wv, v, newest_ms, events, dim
    arr["delta"] = deltas
    raw = arr.tobytes()
    size = arr.dtype.itemsize
    return [raw[i * size : (i + 1) * size] for i in range(k)]


def delta_batch(
    blobs: Sequence[bytes | None], wv: np.ndarray, v: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse K users' `d<ver>` values (None: none) at once. A value answers when it was
    computed on the user's newest vector (`wv`, (K,)) and covers the window as read (meta
    `v`, (K,)), with `dim` components and at least one event.

    Returns (ok (K,) bool, events (K,) int32, newest_ms (K,) int64, deltas (K, dim) float32;
    zeros where not ok)."""
    k = len(blobs)
    dt = _dtype(dim)
    sized = [b if b is not None and len(b) == dt.itemsize else b"\0" * dt.itemsize
             for b in blobs]  # fmt: skip
    arr = np.frombuffer(b"".join(sized), dt, count=k)
    ok = (arr["wv"] == wv) & (arr["v"] == v) & (arr["dim"] == dim) & (arr["n"] > 0)
    events = np.where(ok, arr["n"], 0).astype(np.int32)
    newest = np.where(ok, arr["newest"], 0)
    deltas = np.where(ok[:, None], arr["delta"], 0).astype(np.float32)
    return ok, events, newest, deltas


def write_deltas(
    router: StoreRouter, scripts: Scripts, version: str, user_ids: Sequence[str],
    covered: np.ndarray, values: Sequence[bytes], users_per_call: int = 128,
) -> int:  # fmt: skip
    """Store `values` (`pack_deltas`) as the users' `d<version>`, each only where meta `v`
    still equals `covered` (write_delta.lua); the number written."""
    if not len(user_ids):
        return 0
    buckets = layout.buckets([u.encode() for u in user_ids]).tolist()
    slots = [layout.BUCKET_SLOTS[b] for b in buckets]
    calls: list[ScriptCall] = []
    for chunk in node_chunks(router, slots, users_per_call):
        args: list[object] = [version]
        for i in chunk:
            args += [buckets[i], user_ids[i], int(covered[i]), values[i]]
        calls.append(([layout.meta_key(user_ids[chunk[0]])], args))
    return sum(int(r) for r in scripts.run("write_delta.lua", calls))
