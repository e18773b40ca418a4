"""GetEmbeddingsResponse.embeddings written as protobuf wire bytes with numpy, for all users
at once, then parsed once (upb, in C): the fast twin of building one UserEmbedding message
per user in Python (`fill_entries` in tests/serving/test_wire.py, which holds them together).

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
entry is then three variable pieces (tag + length, id tag + length, id) and that prefix:
`embeddings_bytes` writes each piece padded, a column per user, and masking out the
padding and reading the matrix user by user gives the concatenated entries. The parse
keeps the values, so the message gRPC serializes is the canonical (shortest) one.

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


_LEN_MAX = 1 << 21  # entry and id lengths are written as varints of at most 3 bytes
_LEN_SHIFTS = np.array([0, 7, 14]).reshape(1, 3, 1)  # (1, 3, 1)
_DIGITS = _SHIFTS.reshape(1, 10, 1, 1)  # (1, 10, 1, 1)
_DIGIT_CONT = _CONT.astype(np.uint64).reshape(1, 10, 1, 1)  # (1, 10, 1, 1)
_VARINT_COLS = np.r_[3:13, 23:33, 34:44]  # computed_at_ms, n_events, window_version in a meta


@functools.cache
def _template(h: int) -> np.ndarray:
    """(2 + 44 h,) uint8: status tag, then h VectorMeta fields with their constant bytes."""
    meta = np.zeros(_META, np.uint8)
    meta[[1, 2, 13, 22, 33]] = [_META_BODY, 0x08, 0x11, 0x18, 0x20]
    metas = np.tile(meta, h)
    metas[0] = 0x1A  # `meta` (3), then `history` (4)
    metas[_META::_META] = 0x22
    return np.concatenate([np.array([0x10, 0], np.uint8), metas])


def _utf8(ids: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """All ids' UTF-8 bytes, concatenated, and (N,) each id's byte length."""
    joined = "".join(ids)
    raw = joined.encode()
    if len(raw) == len(joined):  # ASCII: a byte per character
        return raw, np.fromiter(map(len, ids), np.int64, len(ids))
    return raw, np.fromiter(map(len, map(str.encode, ids)), np.int64, len(ids))


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

    All entries are written into one uint8 matrix `mat`, a column per user (numpy's inner
    loops then run along the users, not along a few bytes), with a boolean `mask` of the
    same shape marking the bytes an entry has; `mat.T[mask.T]` reads user by user, so it
    is the concatenated entries. Rows, W the batch's longest id, T = 2 + 44 H::

        0..3        0x22, entry length: a varint in 1..3 slots (lengths < 2**21)
        4..7        0x0a, id length, the same
        8..8+W-1    id bytes (an id fills its length)
        8+W..       status tag and value, then H VectorMeta of 44 bytes (a user has its
                    first `m` of them, see the module docstring)

    Args:
        ids: (N) user ids, request order; at most 16 KiB each.
        status: (N,) EmbeddingStatus values.
        count: (N,) stored values per user (0: none; the meta is then the prior's when
            status is FALLBACK_PRIOR and `prior_ms` is set, else absent).
        computed_at_ms, n_events, window_version: (N, H) newest first; column 0 is `meta`,
            columns 1..count-1 are `history`.
        now_s: the wall clock that ages are measured against.

    Raises:
        ValueError: `ids` is not N long, or an entry is 2 MiB or longer.
    """
    n, h = computed_at_ms.shape
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} users")
    raw, id_len = _utf8(ids)  # (N,)
    w = int(id_len.max(initial=0))
    v = np.array((computed_at_ms.T, n_events.T, window_version.T), np.int64)  # (3, H, N)
    m = np.asarray(count, np.int64)  # (N,) metas written
    if prior_ms is not None:
        fallback = (m == 0) & (np.asarray(status) == pb.STATUS_FALLBACK_PRIOR)
        v[:, 0, fallback] = [[prior_ms], [0], [0]]
        m = m + fallback

    lengths = np.empty((2, n), np.int64)  # (2, N): entry length, id length
    lengths[1] = id_len
    # id tag, id length varint (a byte per 7 bits), id, status (2 bytes), the metas
    lengths[0] = id_len + (id_len > 0x7F) + (id_len > 0x3FFF) + 4 + _META * m
    if n and lengths[0].max() >= _LEN_MAX:
        raise ValueError(f"an entry of {lengths[0].max()} bytes; at most {_LEN_MAX - 1}")
    groups = lengths[:, None] >> _LEN_SHIFTS  # (2, 3, N): bits 0.., 7.., 14..
    more = groups > 0x7F  # (2, 3, N): another varint byte follows

    t = 2 + _META * h
    mat = np.empty((8 + w + t, n), np.uint8)  # (8 + W + T, N)
    mask = np.empty((8 + w + t, n), np.bool_)  # (8 + W + T, N)
    head, head_mask = mat[:8].reshape(2, 4, n), mask[:8].reshape(2, 4, n)  # (2, 4, N) views
    head[:, 0] = [[0x22], [0x0A]]
    head[:, 1:] = groups | more << 7  # the assignment keeps the low byte
    head_mask[:, :2] = True
    head_mask[:, 2:] = more[:, :2]

    id_mask = mask[8 : 8 + w]  # (W, N)
    np.less(np.arange(w)[:, None], id_len, out=id_mask)
    mat[8 : 8 + w].T[id_mask.T] = np.frombuffer(raw, np.uint8)  # user by user

    tail = mat[8 + w :]  # (T, N)
    tail[:] = _template(h)[:, None]
    tail[1] = status
    mask[8 + w : 10 + w] = True
    mask[10 + w :].reshape(h, _META, n)[:] = (m > np.arange(h)[:, None])[:, None]
    metas = tail[2:].reshape(h, _META, n)  # (H, 44, N), a view
    digits = (v.view(np.uint64)[:, None] >> _DIGITS) | _DIGIT_CONT  # (3, 10, H, N)
    metas[:, _VARINT_COLS] = digits.reshape(30, h, n).transpose(1, 0, 2)  # low bytes
    ages = np.maximum(0.0, now_s - v[0] / 1000.0)  # (H, N) float64, little-endian
    metas[:, 14:22] = ages.view(np.uint8).reshape(h, n, 8).transpose(0, 2, 1)
    return mat.T[mask.T].tobytes()


def response(
    ids: Sequence[str], status: np.ndarray, count: np.ndarray, computed_at_ms: np.ndarray,
    n_events: np.ndarray, window_version: np.ndarray, now_s: float, prior_ms: int | None,
) -> pb.GetEmbeddingsResponse:  # fmt: skip
    """A GetEmbeddingsResponse holding just the entries (the caller sets the rest)."""
    return pb.GetEmbeddingsResponse.FromString(
        embeddings_bytes(ids, status, count, computed_at_ms, n_events, window_version, now_s,
                         prior_ms)
    )  # fmt: skip
