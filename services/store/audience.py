"""Audiences by propensity: the users of a model version whose outcome score is at least a
threshold, read from the per-bucket sorted sets `write_vectors.lua` keeps (LAYOUT.md,
"Audiences"): `p:{B}:a:<ver>:<column>`, member = user id, score = the user's newest
probability for score column `column` of the version.

Work happens in two pipelined passes over the 1024 buckets: `counts` (one ZCOUNT per
bucket) says how many members each bucket holds at or above the threshold, the caller cuts
a page out of those counts as spans `(bucket, offset, count)`, and `members` reads just
those spans (ZRANGE BYSCORE REV LIMIT), best first within a bucket. `threshold_for_top`
finds the score of the N-th best user in two reads (each bucket's top few, then every
member above the N-th of those).

Example (3 users in bucket 7 at 0.9, 0.5, 0.2; threshold 0.4)::

    counts(...)[7] == 2
    members(..., [(7, 0, 2)]) == [(["u1", "u2"], [0.9, 0.5])]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from contract.versions import check_version
from services.store import layout
from services.store.router import StoreRouter, raise_first

INF = float("inf")
Span = tuple[int, int, int]  # bucket, offset within the bucket's members (best first), count


def audience_key(bucket: int, version: str, column: int) -> bytes:
    return b"p:{%d}:a:%s:%d" % (bucket, check_version(version).encode(), column)


def _bound(x: float) -> str:
    return "+inf" if x == float("inf") else repr(float(x))


def counts(
    router: StoreRouter, version: str, column: int, min_score: float, max_score: float = INF
) -> np.ndarray:
    """(BUCKETS,) int64: members of each bucket with min_score <= score <= max_score."""
    keys = [audience_key(b, version, column) for b in range(layout.BUCKETS)]
    lo, hi = _bound(min_score), _bound(max_score)
    got = router.execute([(k, ("ZCOUNT", k, lo, hi)) for k in keys])
    raise_first(got)
    return np.asarray(got, np.int64)


def members(
    router: StoreRouter, version: str, column: int, min_score: float, spans: Sequence[Span],
    max_score: float = INF,
) -> list[tuple[list[str], list[float]]]:  # fmt: skip
    """Per span, its users and scores, best first (ties: the larger id first)."""
    calls = []
    for b, offset, n in spans:
        k = audience_key(b, version, column)
        cmd = ("ZRANGE", k, _bound(max_score), _bound(min_score), "BYSCORE", "REV", "LIMIT",
               offset, n, "WITHSCORES")  # fmt: skip
        calls.append((k, cmd))
    got = router.execute(calls)
    raise_first(got)
    out = []
    for reply in got:
        pairs = _pairs(reply)
        out.append(([u.decode("utf-8", "replace") for u, _ in pairs], [float(s) for _, s in pairs]))
    return out


def _pairs(reply: list[Any]) -> list[tuple[bytes, float]]:
    """ZRANGE WITHSCORES as redis-py returns it: (member, score) pairs, or a flat list."""
    if reply and isinstance(reply[0], list | tuple):
        return [(m, float(s)) for m, s in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


def threshold_for_top(router: StoreRouter, version: str, column: int, n: int) -> float:
    """The score of the n-th best member (0.0 when the audience has fewer than n), exact, in
    two pipelined reads: every bucket's top few scores (4x a bucket's mean share of n) give
    t1, a score at least n members reach (so the n-th best is >= t1); then every member
    >= t1 (about n of them, since ids spread evenly over the buckets) gives the n-th best.
    A bucket's candidates running short (a small audience) falls back to reading it all."""
    keys = [audience_key(b, version, column) for b in range(layout.BUCKETS)]
    c = max(2, -(-4 * n // layout.BUCKETS))
    got = router.execute(
        [(k, ("ZRANGE", k, "+inf", "-inf", "BYSCORE", "REV", "LIMIT", 0, c, "WITHSCORES"))
         for k in keys]
    )  # fmt: skip
    raise_first(got)
    top = sorted((s for reply in got for _, s in _pairs(reply)), reverse=True)
    t1 = top[n - 1] if len(top) >= n else -INF
    got = router.execute([(k, ("ZRANGE", k, "+inf", _low(t1), "BYSCORE", "REV", "WITHSCORES"))
                          for k in keys])  # fmt: skip
    raise_first(got)
    every = sorted((s for reply in got for _, s in _pairs(reply)), reverse=True)
    return every[n - 1] if len(every) >= n else 0.0


def _low(x: float) -> str:
    return "-inf" if x == -INF else repr(float(x))


def page_spans(per_bucket: np.ndarray, bucket: int, offset: int, size: int) -> list[Span]:
    """Cut a page of up to `size` members out of `per_bucket` counts, from (bucket,
    offset) on, in bucket order.

    >>> page_spans(np.array([2, 0, 3]), 0, 1, 3)
    [(0, 1, 1), (2, 0, 2)]
    """
    spans: list[Span] = []
    left = size
    for b in range(bucket, len(per_bucket)):
        avail = int(per_bucket[b]) - (offset if b == bucket else 0)
        if avail <= 0:
            continue
        take = min(avail, left)
        spans.append((b, offset if b == bucket else 0, take))
        left -= take
        if left == 0:
            break
    return spans
