"""GetEmbeddingsResponse.embeddings written as protobuf wire bytes with numpy, for all users
at once, then parsed once (upb, in C): the fast twin of building one UserEmbedding message
per user in Python (`servicer.fill_entries`). tests/serving/test_wire.py holds them together.

Wire format (proto/service.proto; tag byte = field number << 3 | wire type)::

    GetEmbeddingsResponse.embeddings  0x22 len  UserEmbedding
    UserEmbedding   user_id 0x0a len bytes | status 0x10 varint | meta 0x1a len VectorMeta
                    | history 0x22 len VectorMeta (repeated)
    VectorMeta      computed_at_ms 0x08 varint | age_seconds 0x11 double | n_events 0x18 varint
                    | window_version 0x20 varint

Every varint of a VectorMeta is written in its longest form, 10 bytes (a parser must accept
over-long varints; upb does), so every VectorMeta is 44 bytes and the part of an entry
after its id is a fixed layout: status, then `meta`, then the history values, of which a
user has a prefix (`m` values: 0 when not found, 1 for the prior, `count` when found). An
entry is then three variable pieces (tag + length, id tag + length, id) and that prefix;
masking out the padding of each piece and reading the matrix in row order gives the
concatenated entries. The parse keeps the values, so the message gRPC serializes is the
canonical (shortest) one.

Example: found user "u1" (one value)::

    0x22 0x32 | 0x0a 0x02 "u1" | 0x10 0x01 | 0x1a 0x2a 0x08 <10> 0x11 <8> 0x18 <10> 0x20 <10>
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from proto import service_pb2 as pb

_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)  # (10,)
_CONT = np.array([0x80] * 9 + [0], np.uint8)  # continuation bit on all but the last byte
_META_BODY = 42  # 1 + 10 + 1 + 8 + 1 + 10 + 1 + 10
_META = _META_BODY + 2  # with its tag and length byte


def long_varints(x: np.ndarray) -> np.ndarray:
    """(..., 10) uint8: int64 values as 10-byte varints (two's complement, as protobuf).

    >>> bytes(long_varints(np.array([300]))[0]).hex()
    'ac828080808080808000'
    """
    u = np.asarray(x, dtype=np.int64).view(np.uint64)
    return ((u[..., None] >> _SHIFTS) & np.uint64(0x7F)).astype(np.uint8) | _CONT


_SMALL = tuple(  # varints of 0 <= x < 2**14: id lengths and entry lengths
    bytes([x]) if x < 0x80 else bytes([(x & 0x7F) | 0x80, x >> 7]) for x in range(1 << 14)
)


@functools.cache
def _template(h: int) -> np.ndarray:
    """(2 + 44 h,) uint8: status tag, then h VectorMeta fields with their constant bytes."""
    meta = np.zeros(_META, np.uint8)
    meta[[1, 2, 13, 22, 33]] = [_META_BODY, 0x08, 0x11, 0x18, 0x20]
    metas = np.tile(meta, h)
    metas[0] = 0x1A  # `meta` (3), then `history` (4)
    metas[_META::_META] = 0x22
    return np.concatenate([np.array([0x10, 0], np.uint8), metas])


def embeddings_bytes(
    ids: Sequence[str],
    status: np.ndarray,
    count: np.ndarray,
    computed_at_ms: np.ndarray,
    n_events: np.ndarray,
    window_version: np.ndarray,
    now_s: float,
    prior_ms: int | None = None,
) -> bytes:
    """The `embeddings` field (all entries, tags included) of a GetEmbeddingsResponse.

    Args:
        ids: (N) user ids, request order; at most 16 KiB each.
        status: (N,) EmbeddingStatus values.
        count: (N,) stored values per user (0: none; the meta is then the prior's when
            status is FALLBACK_PRIOR and `prior_ms` is set, else absent).
        computed_at_ms, n_events, window_version: (N, H) newest first; column 0 is `meta`,
            columns 1..count-1 are `history`.
        now_s: the wall clock that ages are measured against.
    """
    n, h = computed_at_ms.shape
    ts, ne, wv = (np.array(a, np.int64) for a in (computed_at_ms, n_events, window_version))
    metas = np.asarray(count, np.int64)
    if prior_ms is not None:
        fallback = (metas == 0) & (np.asarray(status) == pb.STATUS_FALLBACK_PRIOR)
        ts[fallback, 0], ne[fallback, 0], wv[fallback, 0] = prior_ms, 0, 0
        metas = metas + fallback
    tail = np.empty((n, 2 + _META * h), np.uint8)  # (N, 2 + 44 H)
    tail[:] = _template(h)
    tail[:, 1] = status
    m = tail[:, 2:].reshape(n, h, _META)  # (N, H, 44), a view
    var = long_varints(np.stack([ts, ne, wv], axis=2))  # (N, H, 3, 10)
    m[:, :, 3:13], m[:, :, 23:33], m[:, :, 34:44] = var[:, :, 0], var[:, :, 1], var[:, :, 2]
    ages = np.maximum(0.0, now_s - ts / 1000.0).astype("<f8")  # (N, H)
    m[:, :, 14:22] = ages.view(np.uint8).reshape(n, h, 8)
    buf = tail.tobytes()
    width = tail.shape[1]
    small = _SMALL
    out: list[bytes] = []
    start = 0
    for u, k in zip(ids, (2 + _META * metas).tolist(), strict=True):
        raw = u.encode("utf-8")
        ulen = small[len(raw)]
        out += (b"\x22", small[1 + len(ulen) + len(raw) + k], b"\x0a", ulen, raw,
                buf[start : start + k])  # fmt: skip
        start += width
    return b"".join(out)


def response(
    ids: Sequence[str], status: np.ndarray, count: np.ndarray, computed_at_ms: np.ndarray,
    n_events: np.ndarray, window_version: np.ndarray, now_s: float, prior_ms: int | None,
) -> pb.GetEmbeddingsResponse:  # fmt: skip
    """A GetEmbeddingsResponse holding just the entries (the caller sets the rest)."""
    return pb.GetEmbeddingsResponse.FromString(
        embeddings_bytes(ids, status, count, computed_at_ms, n_events, window_version, now_s,
                         prior_ms)
    )  # fmt: skip
