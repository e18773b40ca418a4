"""The short-term head's read (issue #17): each user's vectors and what the window gained
since the newest of them was encoded, for `VectorStore.read_recent`.

Three sources, one answer (LAYOUT.md "Vector value, layout 3", "Short-term state" and
"Short-term delta"):
- the **delta** ingest computed after its APPLY (meta field `d<ver>`, `deltas.py`): the
  head's output itself, read with meta `v` (one `HMGET`) in the same pipelined round trip
  as the vectors; used when it was computed on the user's newest vector and covers the
  window as read. Serving then only adds it.
- the **short-term state** kept by ingest in the user's meta hash (field `s<ver>`): the
  head's row of every event an APPLY added since the version's newest vector, tagged with
  the event's time and the window version the APPLY made. Read (one `HGET` each, one more
  round trip) for the users whose delta does not answer (an APPLY since ingest's last
  delta, a refresh racing it), parsed for all of them at once (`state_batch`, numpy over
  fixed-size entries): no script, no event decoding.
- the window's events after the marker, read by `read_recent.lua`, for the users whose
  state does not account for every window change since their vector (ingest without the
  models, a cutover's first seconds, more applies than the state keeps, a forget) or whose
  new events are not in time order after the marker (a late event, equal timestamps: their
  order needs the event ids, which the state does not keep).

The last two give the same events: strictly after the marker in window order `(ts_ms, event id)`,
the newest `max_events`, oldest first; and the same rows of them, bit for bit
(`encoder.shortterm.ShortTermHead.event_rows` depends on the event alone).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from typing import Any

import hiredis
import numpy as np
from redis.exceptions import NoScriptError, ResponseError

from contract.events import Event
from contract.versions import check_version
from services.store import deltas, layout
from services.store.records import (
    VectorBatch,
    decode_batch,
    merge_rows,
    packed_lranges,
    vector_key,
)
from services.store.router import Packed, StoreRouter, raise_first
from services.store.scripts import Scripts, node_chunks
from services.store.windows import decode_records

_pack: Any = hiredis.pack_command  # (its stub types the tuple as one element)


@dataclass(frozen=True, slots=True)
class Recent:
    """What each of N users' newest vector has not folded in: `events[i]`, the window's
    events after the marker (oldest first; [] for a user served from the state or with
    nothing new), and, from the short-term state, `rows` (M, H) float32 of the users with
    `lengths[i]` > 0 one after the other (each user's oldest first), `newest_ms[i]` the
    newest such event's time."""

    events: list[list[Event]]
    lengths: np.ndarray
    rows: np.ndarray
    newest_ms: np.ndarray
    # from the delta ingest computed (`deltas.py`): (N,) events it folded (0: none) and
    # (N, E) the head's output; None: no user's delta answered
    delta_n: np.ndarray | None = None
    deltas: np.ndarray | None = None
    window_v: np.ndarray | None = None  # (N,) meta `v` as read (None: not read)

    @classmethod
    def nothing(cls, n: int, row_dim: int = 0) -> Recent:
        return cls([[] for _ in range(n)], np.zeros(n, np.int64),
                   np.zeros((0, row_dim), np.float32), np.zeros(n, np.int64))  # fmt: skip


def state_batch(
    states: Sequence[bytes | None], since: np.ndarray, now: np.ndarray, marker_ts: np.ndarray,
    most: int, row_dim: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Parse K users' short-term states (the meta field; None: none) at once.

    A user's state answers when its entries after the vector (window version in (`since`,
    `now`], the vector's and the meta's) account for every window change since: each of
    those versions' entries all there, as many as the APPLY that made it added; and when
    their times strictly increase from the marker's (`marker_ts`) on, so that their order is
    the window's. Entries past `now` (an APPLY between the meta read and this) wait.

    Returns (ok (K,) bool: the state answers, lengths (K,) of the rows kept (the newest
    `most`; 0 where not ok), rows (M, H), newest_ms (K,))."""
    k = len(states)
    esize = layout.STATE_ENTRY.size + 4 * row_dim
    blobs = [b or b"" for b in states]
    sizes = np.fromiter(map(len, blobs), np.int64, k)
    ok = sizes % esize == 0  # else rows of another length: a head trained again
    if not ok.all():
        blobs = [b if g else b"" for b, g in zip(blobs, ok.tolist(), strict=True)]
        sizes = np.where(ok, sizes, 0)
    dt = np.dtype([("ts", "<i8"), ("v", "<i8"), ("cnt", "<u4"), ("h", "<u4"),
                   ("row", "<f4", (row_dim,))])  # fmt: skip
    arr = np.frombuffer(b"".join(blobs), dt)
    user = np.repeat(np.arange(k), sizes // esize)
    ok &= np.bincount(user, arr["h"] != row_dim, minlength=k) == 0
    keep = (arr["v"] > since[user]) & (arr["v"] <= now[user])
    if not keep.all():
        arr, user = arr[keep], user[keep]
    n = len(arr)
    first = np.ones(n, bool)  # each user's first kept entry
    first[1:] = user[1:] != user[:-1]
    group = first.copy()  # the first entry of each APPLY (entries go in APPLY order)
    group[1:] |= arr["v"][1:] != arr["v"][:-1]
    applies = np.bincount(user[group], minlength=k)
    expected = np.bincount(user[group], arr["cnt"][group], minlength=k)
    ok &= (applies == now - since) & (expected == np.bincount(user, minlength=k))
    before = np.where(first, marker_ts[user], np.concatenate([[0], arr["ts"][:-1]]))
    ok &= np.bincount(user, arr["ts"] <= before, minlength=k) == 0
    sel = ok[user]
    if not sel.all():
        arr, user = arr[sel], user[sel]
    lengths = np.bincount(user, minlength=k)
    if lengths.max(initial=0) > most:  # the newest `most` of each user
        newest = (np.cumsum(lengths)[user] - 1 - np.arange(len(arr))) < most
        arr, user = arr[newest], user[newest]
        lengths = np.bincount(user, minlength=k)
    last = np.cumsum(lengths) - 1
    newest_ms = np.where(lengths > 0, arr["ts"][np.maximum(last, 0)] if len(arr) else 0, 0)
    return ok, lengths, np.ascontiguousarray(arr["row"], np.float32), newest_ms


def read_recent(
    router: StoreRouter, scripts: Scripts, user_ids: Sequence[str], version: str,
    history: int, max_events: int, deadline: float, users_per_call: int = 128,
    row_dim: int = 0, use_deltas: bool = True,
) -> tuple[VectorBatch, Recent]:  # fmt: skip
    """See `VectorStore.read_recent`."""
    last = max(1, history) - 1
    slots, cmds = packed_lranges(user_ids, version, last)
    n = len(user_ids)
    second = layout.delta_field(version) if use_deltas else layout.state_field(version)
    fields = (b"v", second) if row_dim else (b"v",)
    got = router.read_packed(np.concatenate([slots, slots]),
                             [*cmds, *packed_metas(user_ids, fields)], deadline)  # fmt: skip
    raise_first(got)
    batch = decode_batch(got[:n], history)
    out = Recent.nothing(n, row_dim)
    if batch.marker_ts_ms is None:  # no layout-3 value: nothing to fold
        return batch, out
    meta = got[n:]
    vs = (r[0] for r in meta) if row_dim else iter(meta)
    v = np.fromiter((int(r or 0) for r in vs), np.int64, n)
    wv = batch.window_version[:, 0]
    marks = batch.marker_ts_ms[:, 0]
    rows = np.flatnonzero((batch.count > 0) & (marks > 0) & (v != wv))
    lengths, newest, state = out.lengths, out.newest_ms, out.rows
    d_n, d_rows = None, None
    if row_dim > 0 and len(rows) and use_deltas:
        # 1. the delta ingest computed, when it covers the window as read
        ok, d_got, d_new, d_vec = deltas.delta_batch([meta[i][1] for i in rows.tolist()],
                                                     wv[rows], v[rows], batch.dim)  # fmt: skip
        if ok.any():
            d_n, d_rows = np.zeros(n, np.int32), np.zeros((n, batch.dim), np.float32)
            d_n[rows], d_rows[rows], newest[rows] = d_got, d_vec, d_new
            rows = rows[~ok]
    if row_dim > 0 and len(rows):
        # 2. the short-term state's rows (read with meta v without deltas; else a second
        # round trip, for those users only)
        if use_deltas:
            field = (layout.state_field(version),)
            sub_ids = [user_ids[i] for i in rows.tolist()]
            got_st = router.read_packed(slots[rows], packed_metas(sub_ids, field), deadline)
            raise_first(got_st)
        else:
            got_st = [meta[i][1] for i in rows.tolist()]
        ok, got_len, state, got_new = state_batch(got_st, wv[rows], v[rows], marks[rows],
                                                  max_events, row_dim)  # fmt: skip
        lengths[rows], newest[rows] = got_len, got_new
        rows = rows[~ok]
    out = Recent(out.events, lengths, state, newest, d_n, d_rows, v)
    if not len(rows):
        return batch, out
    # 3. the window's events after the marker, read by script
    sub = [user_ids[i] for i in rows.tolist()]
    got_s, new = read_recent_script(router, scripts, sub, version, history, max_events,
                                    deadline, users_per_call)  # fmt: skip
    merged = merge_rows(batch, got_s, rows)
    if merged is None:  # another shape (a rewrite between the reads)
        whole, events = read_recent_script(router, scripts, user_ids, version, history,
                                           max_events, deadline, users_per_call)  # fmt: skip
        none = Recent.nothing(n, row_dim)
        return whole, replace(none, events=list(events), window_v=v)
    for i, evs in zip(rows.tolist(), new, strict=True):
        out.events[i] = evs
    return merged, out


def packed_metas(user_ids: Sequence[str], fields: Sequence[bytes]) -> list[Packed]:
    """`HGET meta_key(u) <field>`, or with several fields `HMGET meta_key(u) <fields...>`,
    for every id, packed in RESP as `records.packed_lranges` packs its LRANGEs (same
    slots)."""
    raws = list(map(str.encode, user_ids))
    tail = b"".join(b"\r\n$%d\r\n%s" % (len(f), f) for f in fields) + b"\r\n"
    head = functools.partial(_meta_head, b"HGET" if len(fields) == 1 else b"HMGET",
                             2 + len(fields))  # fmt: skip
    return list(zip(map(head, layout.buckets(raws).tolist(), map(len, raws)), raws, repeat(tail)))


@functools.lru_cache(maxsize=8192)
def _meta_head(cmd: bytes, argc: int, bucket: int, uid_len: int) -> bytes:
    """The RESP of `cmd` up to the meta key of a user of `bucket` whose id is `uid_len`
    bytes (cached: a hit costs no Python frame of its own)."""
    key = b"p:{%d}:m:" % bucket
    return b"*%d\r\n$%d\r\n%s\r\n$%d\r\n%s" % (argc, len(cmd), cmd, len(key) + uid_len, key)


def read_recent_script(
    router: StoreRouter, scripts: Scripts, user_ids: Sequence[str], version: str,
    history: int, max_events: int, deadline: float, users_per_call: int,
) -> tuple[VectorBatch, list[list[Event]]]:  # fmt: skip
    """The read by `read_recent.lua` alone: one call per node and chunk of
    `users_per_call` users, all written before any reply is read."""
    check_version(version)
    last, most = max(1, history) - 1, max(0, max_events)
    raws = list(map(str.encode, user_ids))  # UTF-8
    n = len(raws)
    buckets = layout.buckets(raws).tolist()
    slots = [layout.BUCKET_SLOTS[b] for b in buckets]
    results: list[Any] = []
    for attempt in (0, 1):
        sha = scripts.sha("read_recent.lua")
        chunks = node_chunks(router, slots, users_per_call)
        cmds: list[tuple[bytes]] = []
        for chunk in chunks:
            args: list[Any] = ["EVALSHA", sha, 1, vector_key(user_ids[chunk[0]], version),
                               version, last, most]  # fmt: skip
            for i in chunk:
                args += (buckets[i], raws[i])
            cmds.append((_pack(tuple(args)),))
        firsts = np.array([slots[c[0]] for c in chunks], np.int64)
        results = router.read_packed(firsts, cmds, deadline)
        if attempt == 0 and any(isinstance(r, ResponseError) for r in results):
            if any(isinstance(r, NoScriptError) for r in results):
                scripts.load()  # a node lost its script cache (restart, failover)
            else:  # e.g. a key of another slot than the node serves: the map moved
                router.relearn()
            continue
        break
    raise_first(results)
    replies: list[Any] = [None] * n
    for chunk, r in zip(chunks, results, strict=True):
        for i, got in zip(chunk, r, strict=True):
            replies[i] = got
    batch = decode_batch([r[0] for r in replies], history)
    events = [
        decode_records(u, r)[0] if len(r) > 1 else []
        for u, r in zip(user_ids, replies, strict=True)
    ]  # fmt: skip
    return batch, events
