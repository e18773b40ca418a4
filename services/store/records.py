"""Vector records and their keys: the 24-byte-header binary record (LAYOUT.md, "Vectors and
model versions"), `p:{B}:v:<ver>:<uid>` keys, and the batched read's two ends: the LRANGEs
packed for `router.StoreRouter.read_packed` (`packed_lranges`) and their replies decoded
into arrays (`decode_batch` -> `VectorBatch`). `vectors.VectorStore` is the store over them.

Layout 1 is the header and the vector; layout 2 (a version with outcome heads) adds the
user's outcome scores after the vector (u16 count, then float16 probabilities), so a vector
and its scores are one value: one write, one history, one read. Layout 3 is layout 2 (any
number of scores, 0 included) plus the marker of the newest window event the vector folded
in (event id, u16 id length, i64 ts_ms, at the very end so that a Lua script finds it from
the end: `read_recent.lua`, the short-term head's read).

Example::

    rec = pack_vector(StoredVector("u1", "v1", np.ones(4, np.float32), 1_700_000_000_000, 3, 7))
    batch = decode_batch([[rec], []], history=1)  # batch.count == [1, 0]
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, Literal

import numpy as np

from contract.versions import check_version
from services.store import layout
from services.store.router import Packed

VECTOR_LAYOUT = 1  # header + vector
SCORED_LAYOUT = 2  # header + vector + u16 n_scores + n_scores float16 probabilities
MARKED_LAYOUT = 3  # layout 2 + marker: event id bytes, u16 id length, i64 ts_ms
LAYOUTS = (VECTOR_LAYOUT, SCORED_LAYOUT, MARKED_LAYOUT)
Dtype = Literal["float32", "float16"]

_HEAD = struct.Struct("<BBHqqI")  # layout, dtype, dim, computed_at_ms, window_version, n_events
_NSCORES = struct.Struct("<H")
_MARK = struct.Struct("<Hq")  # the marker's tail: id length, ts_ms (the id bytes before it)
MAX_SCORES = 4096
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
    scores: np.ndarray | None = None  # (S,) outcome probabilities (None: layout 1)
    # the newest window event the vector folded in, in window order (ts_ms, event_id): the
    # short-term head folds only events after it (None: layouts 1-2, no marker)
    marker: tuple[int, str] | None = None


def vector_key(user_id: str, version: str) -> bytes:
    check_version(version)
    return f"p:{layout.tag(user_id)}:v:{version}:".encode() + user_id.encode("utf-8")


def pack_vector(v: StoredVector, dtype: Dtype = "float32") -> bytes:
    """StoredVector -> record bytes (user and version are in the key); layout 2 when the
    vector carries scores (stored as float16 whatever `dtype`).

    >>> len(pack_vector(StoredVector("u", "v1", np.zeros(64, np.float32), 0, 0, 0)))
    280
    >>> len(pack_vector(StoredVector("u", "v1", np.zeros(64, np.float32), 0, 0, 0, np.zeros(5))))
    292
    >>> marked = StoredVector("u", "v1", np.zeros(64, np.float32), 0, 0, 0, None, (5, "e1"))
    >>> len(pack_vector(marked))  # layout 3: 0 scores, then the marker
    294
    """
    vec = np.asarray(v.vector, dtype=_DTYPES[_CODES[dtype]]).reshape(-1)
    lay = VECTOR_LAYOUT if v.scores is None else SCORED_LAYOUT
    if v.marker is not None:
        lay = MARKED_LAYOUT
    head = _HEAD.pack(lay, _CODES[dtype], vec.size, v.computed_at_ms, v.window_version, v.n_events)
    if lay == VECTOR_LAYOUT:
        return head + vec.tobytes()
    sc = np.asarray(() if v.scores is None else v.scores, dtype="<f2").reshape(-1)
    if sc.size > MAX_SCORES:
        raise ValueError(f"{sc.size} scores; a record holds at most {MAX_SCORES}")
    body = head + vec.tobytes() + _NSCORES.pack(sc.size) + sc.tobytes()
    if v.marker is None:
        return body
    ts, eid = v.marker
    raw = eid.encode("utf-8")
    return body + raw + _MARK.pack(len(raw), ts)


def unpack_vector(user_id: str, version: str, rec: bytes) -> StoredVector:
    """Record bytes -> StoredVector (vector and scores as float32). ValueError on a bad
    record."""
    if len(rec) < _HEAD.size:
        raise ValueError(f"vector record of {len(rec)} bytes is shorter than its header")
    lay, code, dim, ts, wv, n = _HEAD.unpack_from(rec, 0)
    if lay not in LAYOUTS or code not in _DTYPES:
        raise ValueError(f"vector record layout {lay} dtype {code}; this code reads layouts 1-3")
    end = _HEAD.size + dim * np.dtype(_DTYPES[code]).itemsize
    scores = marker = None
    if lay == MARKED_LAYOUT:
        marker, rec = _marker(rec, end)
    if lay != VECTOR_LAYOUT:
        if len(rec) < end + _NSCORES.size:
            raise ValueError(f"layout {lay} record of {len(rec)} bytes ends before its scores")
        (k,) = _NSCORES.unpack_from(rec, end)
        if len(rec) != end + _NSCORES.size + 2 * k:
            raise ValueError(
                f"layout {lay} record of {len(rec)} bytes, not {dim} values, {k} scores"
            )
        if lay == SCORED_LAYOUT or k:
            scores = np.frombuffer(rec, "<f2", k, end + _NSCORES.size).astype(np.float32)
    elif len(rec) != end:
        raise ValueError(f"vector record of {len(rec)} bytes, header says {dim} values")
    vec = np.frombuffer(rec, dtype=_DTYPES[code], count=dim, offset=_HEAD.size)
    return StoredVector(user_id, version, vec.astype(np.float32), ts, n, wv, scores, marker)


def _marker(rec: bytes, end: int) -> tuple[tuple[int, str], bytes]:
    """A layout-3 record -> (its marker, the record without it). `end`: where the vector ends."""
    if len(rec) < end + _NSCORES.size + _MARK.size:
        raise ValueError(f"layout 3 record of {len(rec)} bytes ends before its marker")
    k, ts = _MARK.unpack_from(rec, len(rec) - _MARK.size)
    start = len(rec) - _MARK.size - k
    if start < end + _NSCORES.size:
        raise ValueError(f"layout 3 record of {len(rec)} bytes, marker id of {k} bytes")
    return (ts, rec[start : len(rec) - _MARK.size].decode("utf-8")), rec[:start]


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
    scores: np.ndarray | None = None  # (N, H, S) float32, NaN where a value has none
    # (N, H) int64: ts_ms of the newest event each value folded in (layout 3), 0 where none
    marker_ts_ms: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[2])

    @property
    def n_scores(self) -> int:
        return 0 if self.scores is None else int(self.scores.shape[2])


def _record_dtype(code: int, dim: int, n_scores: int | None) -> np.dtype[Any]:
    """A record as a numpy structured type (the `_HEAD` fields, the vector, and for layout 2
    the score count and the scores)."""
    fields = [("layout", "u1"), ("dtype", "u1"), ("dim", "<u2"), ("computed_at_ms", "<i8"),
              ("window_version", "<i8"), ("n_events", "<u4"),
              ("vector", _DTYPES[code], (dim,))]  # fmt: skip
    if n_scores is not None:
        fields += [("n_scores", "<u2"), ("scores", "<f2", (n_scores,))]
    return np.dtype(fields)


_META_FIELDS = ("computed_at_ms", "n_events", "window_version")
_MARK_DTYPE = np.dtype([("id_len", "<u2"), ("ts", "<i8")])  # `_MARK`


def _uniform(recs: list[bytes]) -> tuple[np.ndarray, np.ndarray | None] | None:
    """All records as one structured array, when they share one float32 shape (the common
    case: one `np.frombuffer` over their concatenation), and for layout 3 the markers'
    ts_ms (R,) (the ids differ in length: each record is cut before its marker); else
    None."""
    first = recs[0]
    if len(first) < _HEAD.size or first[1] != 1 or first[0] not in LAYOUTS:
        return None
    dim = _HEAD.unpack_from(first, 0)[2]
    n_scores = None
    if first[0] != VECTOR_LAYOUT:
        at = _HEAD.size + 4 * dim
        if len(first) < at + _NSCORES.size:
            return None
        n_scores = _NSCORES.unpack_from(first, at)[0]
    dt = _record_dtype(1, dim, n_scores)
    marks = None
    if first[0] == MARKED_LAYOUT:
        if any(len(r) < dt.itemsize + _MARK.size for r in recs):
            return None
        marks = np.frombuffer(b"".join([r[-_MARK.size :] for r in recs]), _MARK_DTYPE)
        lens = np.fromiter(map(len, recs), np.int64, len(recs))
        if (lens != dt.itemsize + _MARK.size + marks["id_len"]).any():
            return None
        arr = np.frombuffer(b"".join([r[: dt.itemsize] for r in recs]), dtype=dt)
    else:
        if dt.itemsize != len(first) or any(len(r) != dt.itemsize for r in recs):
            return None
        arr = np.frombuffer(b"".join(recs), dtype=dt)
    same = (arr["layout"] == first[0]) & (arr["dtype"] == 1) & (arr["dim"] == dim)
    if n_scores is not None:
        same &= arr["n_scores"] == n_scores
    if not same.all():
        return None
    return arr, None if marks is None else marks["ts"].astype(np.int64)


def decode_batch(replies: Sequence[Sequence[bytes]], history: int) -> VectorBatch:
    """LRANGE replies (one list of records per user, newest first) -> VectorBatch.

    Records of one float32 shape are decoded in one `np.frombuffer` over their
    concatenation; anything else (float16, mixed layouts) record by record through
    `unpack_vector`. Scores: (N, H, S) with S the most any record holds, NaN where a
    record holds fewer (None when no record holds any). ValueError on a bad record, or on
    records of different dimensions.
    """
    n, h = len(replies), max(1, history)
    count = np.fromiter(map(len, replies), np.int64, n)
    if int(count.max(initial=0)) > h:
        raise ValueError(f"a user has {int(count.max())} vectors; {h} were asked for")
    recs = list(chain.from_iterable(replies))  # user order, newest first
    if not recs:
        return VectorBatch(np.zeros((n, h, 0), np.float32), count,
                           **{f: np.zeros((n, h), np.int64) for f in _META_FIELDS})  # fmt: skip
    got = _uniform(recs)
    scores: np.ndarray | None = None  # (R, S)
    marks: np.ndarray | None = None  # (R,) marker ts_ms, 0 where none
    if got is not None:
        arr, marks = got
        vecs = arr["vector"]  # (R, D)
        cols = {f: arr[f] for f in _META_FIELDS}
        if "scores" in (arr.dtype.names or ()) and (arr["layout"][0] == 2 or arr["n_scores"][0]):
            scores = arr["scores"].astype(np.float32)
    else:
        unpacked = [unpack_vector("", "", r) for r in recs]
        dims = {v.vector.size for v in unpacked}
        if len(dims) != 1:
            raise ValueError(f"vector records of different dimensions {sorted(dims)}")
        vecs = np.stack([v.vector for v in unpacked])
        cols = {f: np.array([getattr(v, f) for v in unpacked], np.int64) for f in _META_FIELDS}
        width = max((v.scores.size for v in unpacked if v.scores is not None), default=-1)
        if width >= 0:
            scores = np.full((len(recs), width), np.nan, np.float32)
            for i, v in enumerate(unpacked):
                if v.scores is not None:
                    scores[i, : v.scores.size] = v.scores
        if any(v.marker is not None for v in unpacked):
            marks = np.array([v.marker[0] if v.marker else 0 for v in unpacked], np.int64)
    dim = vecs.shape[1]
    if len(recs) == n * h:  # every user has all H values: the records are the batch, in order
        meta = {f: col.reshape(n, h).astype(np.int64) for f, col in cols.items()}
        sc = None if scores is None else scores.reshape(n, h, -1)
        mk = None if marks is None else marks.reshape(n, h)
        return VectorBatch(
            vecs.reshape(n, h, dim), count, **meta, scores=sc, marker_ts_ms=mk
        )  # fmt: skip  (read-only)
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
    full = mk = None
    if scores is not None:
        full = np.full((n, h, scores.shape[1]), np.nan, np.float32)  # (N, H, S)
        full[where] = scores
    if marks is not None:
        mk = np.zeros((n, h), np.int64)
        mk[where] = marks
    return VectorBatch(vectors, count, **meta, scores=full, marker_ts_ms=mk)


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
    buckets = layout.buckets(raws)  # (N,)
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


def merge_rows(batch: VectorBatch, got: VectorBatch, rows: np.ndarray) -> VectorBatch | None:
    """`batch` with `got`'s users at `rows` ((M,) indices, M = len(got.count)); None when
    their arrays differ in shape (dimension, history, scores)."""
    names = ("vectors", "count", "computed_at_ms", "n_events", "window_version", "scores",
             "marker_ts_ms")  # fmt: skip
    out: dict[str, np.ndarray | None] = {}
    for name in names:
        a, b = getattr(batch, name), getattr(got, name)
        if (a is None) != (b is None):
            return None
        if a is None or b is None:
            out[name] = None
            continue
        if a.shape[1:] != b.shape[1:]:
            return None
        a = np.array(a)  # decoded arrays may be read-only views of the replies
        a[rows] = b
        out[name] = a
    return VectorBatch(**out)  # type: ignore[arg-type]
