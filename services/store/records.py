"""Vector records and their keys: the 24-byte-header binary record (LAYOUT.md, "Vectors and
model versions"), `p:{B}:v:<ver>:<uid>` keys, and the batched read's two ends: the LRANGEs
packed for `router.StoreRouter.read_packed` (`packed_lranges`) and their replies decoded
into arrays (`decode_batch` -> `VectorBatch`). `vectors.VectorStore` is the store over them.

Example::

    rec = pack_vector(StoredVector("u1", "v1", np.ones(4, np.float32), 1_700_000_000_000, 3, 7))
    batch = decode_batch([[rec], []], history=1)  # batch.count == [1, 0]
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, Literal

import numpy as np

from contract.versions import check_version
from services.store import layout
from services.store.router import Packed

VECTOR_LAYOUT = 1
Dtype = Literal["float32", "float16"]

_HEAD = struct.Struct("<BBHqqI")  # layout, dtype, dim, computed_at_ms, window_version, n_events
_DTYPES: dict[int, str] = {1: "<f4", 2: "<f2"}
_CODES: dict[str, int] = {"float32": 1, "float16": 2}


@dataclass(frozen=True)
class StoredVector:
    user_id: str
    model_version: str
    vector: np.ndarray  # float32 (dim,)
    computed_at_ms: int
    n_events: int
    window_version: int


def vector_key(user_id: str, version: str) -> bytes:
    check_version(version)
    return f"p:{layout.tag(user_id)}:v:{version}:".encode() + user_id.encode("utf-8")


def pack_vector(v: StoredVector, dtype: Dtype = "float32") -> bytes:
    """StoredVector -> record bytes (user and version are in the key).

    >>> len(pack_vector(StoredVector("u", "v1", np.zeros(64, np.float32), 0, 0, 0)))
    280
    """
    vec = np.asarray(v.vector, dtype=_DTYPES[_CODES[dtype]]).reshape(-1)
    head = _HEAD.pack(
        VECTOR_LAYOUT, _CODES[dtype], vec.size, v.computed_at_ms, v.window_version, v.n_events
    )
    return head + vec.tobytes()


def unpack_vector(user_id: str, version: str, rec: bytes) -> StoredVector:
    """Record bytes -> StoredVector (vector as float32). ValueError on a bad record."""
    if len(rec) < _HEAD.size:
        raise ValueError(f"vector record of {len(rec)} bytes is shorter than its header")
    lay, code, dim, ts, wv, n = _HEAD.unpack_from(rec, 0)
    if lay != VECTOR_LAYOUT or code not in _DTYPES:
        raise ValueError(f"vector record layout {lay} dtype {code}; this code reads layout 1")
    vec = np.frombuffer(rec, dtype=_DTYPES[code], offset=_HEAD.size)
    if vec.size != dim:
        raise ValueError(f"vector record holds {vec.size} values, header says {dim}")
    return StoredVector(user_id, version, vec.astype(np.float32), ts, n, wv)


@dataclass(frozen=True, slots=True)
class VectorBatch:
    """The vectors of N users under one version, up to H per user, newest first, decoded
    into arrays (`VectorStore.read_batch`). User i has `count[i]` values (0: not found);
    row `vectors[i, j]` and its metadata are meaningful for j < count[i], zeros beyond.

    Example: users ["a", "b"] with history 2, "a" holding two vectors and "b" none::

        count          [2, 0]
        vectors        (2, 2, D): [[a_newest, a_older], [0, 0]]
        computed_at_ms [[t_a1, t_a0], [0, 0]]
    """

    vectors: np.ndarray  # (N, H, D) float32; D = 0 when no user was found
    count: np.ndarray  # (N,) int64
    computed_at_ms: np.ndarray  # (N, H) int64
    n_events: np.ndarray  # (N, H) int64
    window_version: np.ndarray  # (N, H) int64

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[2])


def _record_dtype(code: int, dim: int) -> np.dtype[Any]:
    """A record as a numpy structured type (the `_HEAD` fields, then the vector)."""
    return np.dtype(
        [("layout", "u1"), ("dtype", "u1"), ("dim", "<u2"), ("computed_at_ms", "<i8"),
         ("window_version", "<i8"), ("n_events", "<u4"), ("vector", _DTYPES[code], (dim,))]
    )  # fmt: skip


_REC_DTYPES: dict[int, np.dtype[Any]] = {}  # record length -> float32 record type


def _float32_records(size: int) -> np.dtype[Any] | None:
    dt = _REC_DTYPES.get(size)
    if dt is None and size > _HEAD.size and (size - _HEAD.size) % 4 == 0:
        dt = _REC_DTYPES[size] = _record_dtype(1, (size - _HEAD.size) // 4)
    return dt


_META_FIELDS = ("computed_at_ms", "n_events", "window_version")


def decode_batch(replies: Sequence[Sequence[bytes]], history: int) -> VectorBatch:
    """LRANGE replies (one list of records per user, newest first) -> VectorBatch.

    Records of one float32 length are decoded in one `np.frombuffer` over their
    concatenation; anything else (float16, mixed lengths) record by record through
    `unpack_vector`. ValueError on a bad record, or on records of different dimensions.
    """
    n, h = len(replies), max(1, history)
    count = np.fromiter(map(len, replies), np.int64, n)
    if int(count.max(initial=0)) > h:
        raise ValueError(f"a user has {int(count.max())} vectors; {h} were asked for")
    recs = list(chain.from_iterable(replies))  # user order, newest first
    if not recs:
        return VectorBatch(np.zeros((n, h, 0), np.float32), count,
                           **{f: np.zeros((n, h), np.int64) for f in _META_FIELDS})  # fmt: skip
    size = len(recs[0])
    dt = _float32_records(size)
    if dt is not None and len(set(map(len, recs))) == 1:
        arr = np.frombuffer(b"".join(recs), dtype=dt)
        if (arr["layout"] != VECTOR_LAYOUT).any() or (arr["dtype"] != 1).any():
            raise ValueError(
                "vector record of an unknown layout or dtype; this code reads layout 1"
            )
        dim = dt["vector"].shape[0]
        if (arr["dim"] != dim).any():
            raise ValueError(f"vector record holds {dim} values, header says otherwise")
        vecs = arr["vector"]  # (R, D)
        cols = {f: arr[f] for f in _META_FIELDS}
    else:
        unpacked = [unpack_vector("", "", r) for r in recs]
        dims = {v.vector.size for v in unpacked}
        if len(dims) != 1:
            raise ValueError(f"vector records of different dimensions {sorted(dims)}")
        dim = dims.pop()
        vecs = np.stack([v.vector for v in unpacked])
        cols = {f: np.array([getattr(v, f) for v in unpacked], np.int64) for f in _META_FIELDS}
    if len(recs) == n * h:  # every user has all H values: the records are the batch, in order
        meta = {f: col.reshape(n, h).astype(np.int64) for f, col in cols.items()}
        return VectorBatch(vecs.reshape(n, h, dim), count, **meta)  # (a read-only view)
    meta = {f: np.zeros((n, h), np.int64) for f in _META_FIELDS}
    vectors = np.zeros((n, h, dim), np.float32)  # (N, H, D)
    if h == 1:
        where: Any = (count > 0, 0)
    else:
        users = np.repeat(np.arange(n), count)  # (R,) user of each record
        starts = np.repeat(np.cumsum(count) - count, count)
        where = (users, np.arange(len(recs)) - starts)
    vectors[where] = vecs
    for f, col in cols.items():
        meta[f][where] = col
    return VectorBatch(vectors, count, **meta)


def packed_lranges(
    user_ids: Sequence[str], version: str, last: int
) -> tuple[np.ndarray, list[Packed]]:
    """`LRANGE vector_key(u, version) 0 last` for every id, packed in RESP (in four pieces,
    see `router.Packed`), and the cluster slot of each key: (N,) slots, N commands. The
    serving read's keys, with no per-id Python code: C-level encode, crc32, table lookups
    (the key up to the id from a per-version table of the 1024 bucket prefixes).

    >>> import hiredis
    >>> from redis.crc import key_slot
    >>> slots, [cmd] = packed_lranges(["u1"], "v1", 3)
    >>> b"".join(cmd) == hiredis.pack_command(("LRANGE", vector_key("u1", "v1"), 0, 3))
    True
    >>> int(slots[0]) == key_slot(vector_key("u1", "v1"))
    True
    """
    heads = _key_heads(check_version(version))
    raws = list(map(str.encode, user_ids))  # UTF-8
    n = len(raws)
    buckets = np.fromiter(map(zlib.crc32, raws), np.int64, n) % layout.BUCKETS  # (N,)
    key_lens = heads.lens[buckets] + np.fromiter(map(len, raws), np.int64, n)  # (N,)
    n_last = b"%d" % last
    tail = b"\r\n$1\r\n0\r\n$%d\r\n%s\r\n" % (len(n_last), n_last)  # "0", last
    cmds: list[Packed] = list(zip(map(_lrange_head, key_lens.tolist()), map(heads.of.__getitem__,
                              buckets.tolist()), raws, repeat(tail)))  # fmt: skip
    return _SLOT_OF_BUCKET[buckets], cmds


_SLOT_OF_BUCKET = np.asarray(layout.BUCKET_SLOTS, np.int64)  # (BUCKETS,)


@functools.lru_cache(maxsize=4096)
def _lrange_head(key_len: int) -> bytes:
    """The RESP of `LRANGE` up to a key of `key_len` bytes (cached: a hit is a C-level call,
    no Python frame, so mapping it over the ids stays in C)."""
    return b"*4\r\n$6\r\nLRANGE\r\n$%d\r\n" % key_len


@dataclass(frozen=True)
class _KeyHeads:
    """`vector_key` up to the user id, per bucket, for one version."""

    of: tuple[bytes, ...]  # (BUCKETS,) b"p:{b}:v:<version>:"
    lens: np.ndarray  # (BUCKETS,) their lengths


@functools.lru_cache(maxsize=64)
def _key_heads(version: str) -> _KeyHeads:
    of = tuple(b"p:{%d}:v:%s:" % (b, version.encode()) for b in range(layout.BUCKETS))
    return _KeyHeads(of, np.fromiter(map(len, of), np.int64, len(of)))
