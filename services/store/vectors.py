"""The vector store: versioned user vectors with history, and the active-version pointer.

Laid out as in LAYOUT.md ("Vectors and model versions"): `p:{B}:v:<ver>:<uid>` lists, newest
first, of 24-byte-header binary records; `p:{models}:*` keys for the pointer and the states.
Every batched access goes through `sharded.execute` (one pipeline per shard).

Example::

    store = VectorStore(connect("redis://127.0.0.1:6379"))
    store.put_batch([StoredVector("u1", "v1", np.ones(4, np.float32), 1_700_000_000_000, 3, 7)])
    store.set_active("v1")
    [[latest]] = store.get_batch(["u1"], store.active_version() or "v1")
"""

from __future__ import annotations

import functools
import re
import struct
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import chain, repeat
from typing import Any, Literal

import numpy as np
from redis.exceptions import NoScriptError, ResponseError

from services.store import layout, sharded
from services.store.client import Client
from services.store.scatter import Packed, ShardReader

VECTOR_LAYOUT = 1
STATES = ("backfilling", "ready", "active", "retired")
Dtype = Literal["float32", "float16"]

_HEAD = struct.Struct("<BBHqqI")  # layout, dtype, dim, computed_at_ms, window_version, n_events
_DTYPES: dict[int, str] = {1: "<f4", 2: "<f2"}
_CODES: dict[str, int] = {"float32": 1, "float16": 2}
_VERSION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

ACTIVE_KEY = b"p:{models}:active"
STATES_KEY = b"p:{models}:states"
HISTORY_KEY = b"p:{models}:history"
REGISTRY_SEEN_KEY = b"p:{models}:registry_seen"


class CutoverError(RuntimeError):
    """A version flip the store refused (unknown, retired or not ready version)."""


@dataclass(frozen=True)
class StoredVector:
    user_id: str
    model_version: str
    vector: np.ndarray  # float32 (dim,)
    computed_at_ms: int
    n_events: int
    window_version: int


@dataclass(frozen=True, slots=True)
class UserWrite:
    """Vectors of one user (at most one per version); `expect_window_version` set: clear the
    user's dirty mark if the meta `v` still equals it (the refresher's write)."""

    user_id: str
    vectors: Sequence[StoredVector]
    expect_window_version: int | None = None


@dataclass(slots=True)
class WriteResult:
    written: int = 0  # vectors pushed or replacing a head of the same window version
    skipped: int = 0  # vectors older than the stored head (not written)
    cleared: int = 0  # dirty marks removed
    still_dirty: int = 0  # users changed while being encoded (mark kept)
    replaced_computed_at_ms: list[int] = field(default_factory=list)  # heads written over


def check_version(version: str) -> str:
    if not _VERSION_RE.fullmatch(version):
        raise ValueError(f"model version {version!r} must match {_VERSION_RE.pattern}")
    return version


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
    see `scatter.Packed`), and the cluster slot of each key: (N,) slots, N commands. The
    serving read's keys, with no per-id Python code: C-level encode, crc32, table lookups
    (the key up to the id comes from a per-version table of the 1024 bucket prefixes).

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
    short = key_lens.max(initial=0) < len(_LRANGE_HEADS)
    head = _LRANGE_HEADS.__getitem__ if short else _lrange_head
    cmds: list[Packed] = list(zip(map(head, key_lens.tolist()), map(heads.of.__getitem__,
                              buckets.tolist()), raws, repeat(tail)))  # fmt: skip
    return _SLOT_OF_BUCKET[buckets], cmds


_SLOT_OF_BUCKET = np.asarray(layout.BUCKET_SLOTS, np.int64)  # (BUCKETS,)
_LRANGE_HEADS = tuple(b"*4\r\n$6\r\nLRANGE\r\n$%d\r\n" % n for n in range(1024))


def _lrange_head(key_len: int) -> bytes:
    """The RESP of `LRANGE` up to a key of `key_len` bytes."""
    if key_len < len(_LRANGE_HEADS):
        return _LRANGE_HEADS[key_len]
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


def _script(name: str) -> str:
    return resources.files("services.store").joinpath(name).read_text()


def _raise_first(results: Sequence[Any]) -> None:
    for r in results:
        if isinstance(r, Exception):
            raise r


class VectorStore:
    """Versioned vectors in a Redis / Valkey node or cluster.

    Args:
        client: from `services.store.client.connect`.
        history: vectors kept per user and version (the oldest drops off).
        ttl_s: expire a user's vectors this long after their last write (None: never).
        dtype: value encoding of new writes; reads accept both.
    """

    def __init__(
        self, client: Client, history: int = 4, ttl_s: int | None = None, dtype: Dtype = "float32"
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.client = client
        self.history = history
        self.ttl_s = ttl_s
        self.dtype: Dtype = dtype
        self._src = {"write": _script("write_vectors.lua"), "flip": _script("set_active.lua")}
        self._sha: dict[str, str] = {}
        self._reader = ShardReader()
        self._load_scripts()

    def _load_scripts(self) -> None:
        self._sha = {name: str(self.client.script_load(src)) for name, src in self._src.items()}

    def _eval(self, name: str, calls: Sequence[tuple[Sequence[bytes], Sequence[Any]]]) -> list[Any]:
        """EVALSHA per (keys, args), pipelined per shard; reload once on NOSCRIPT."""
        for attempt in (0, 1):
            sha = self._sha[name]
            results = sharded.execute(
                self.client, [(k[0], ("EVALSHA", sha, len(k), *k, *a)) for k, a in calls]
            )
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                self._load_scripts()  # a node lost its script cache; the scripts are idempotent
                continue
            _raise_first(results)
            return list(results)
        raise ResponseError("NOSCRIPT after reload")  # pragma: no cover

    # ----- the active pointer and version states ---------------------------------------

    def active_version(self) -> str | None:
        raw = self.client.get(ACTIVE_KEY)
        return raw.decode() if isinstance(raw, bytes) and raw else None

    def versions(self) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.client.hgetall(STATES_KEY)  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}

    def set_state(self, version: str, state: str) -> None:
        """Record a version's state (not "active": that is `set_active`)."""
        if state not in STATES or state == "active":
            raise ValueError(f"state must be one of backfilling/ready/retired, got {state!r}")
        if state == "retired" and self.active_version() == version:
            raise CutoverError(f"{version} is active; promote another version first")
        self.client.hset(STATES_KEY, check_version(version), state)

    def set_active(self, version: str, require: str = "") -> str | None:
        """Make `version` active in one atomic step; the old one becomes "ready" and goes on
        the history. `require`: refuse unless the version is in this state (e.g. "ready").
        Returns the previous active version."""
        return self._flip(check_version(version), "push", require)

    def rollback(self) -> tuple[str | None, str]:
        """Re-activate the version active before the current one. Returns (from, to)."""
        raw = self.client.lindex(HISTORY_KEY, 0)
        if not isinstance(raw, bytes):
            raise CutoverError("no earlier active version to roll back to")
        target = raw.decode()
        return self._flip(target, "pop", ""), target

    def _flip(self, version: str, mode: str, require: str) -> str | None:
        keys = [ACTIVE_KEY, STATES_KEY, HISTORY_KEY]
        try:
            (old,) = self._eval("flip", [(keys, [version, mode, require])])
        except ResponseError as exc:
            if str(exc).startswith("CUTOVER"):
                raise CutoverError(str(exc)[len("CUTOVER ") :]) from exc
            raise
        return (old.decode() or None) if isinstance(old, bytes) else None

    def history_versions(self) -> list[str]:
        raw: list[bytes] = self.client.lrange(HISTORY_KEY, 0, -1)  # type: ignore[assignment]
        return [r.decode() for r in raw]

    def registry_seen(self) -> str | None:
        raw = self.client.get(REGISTRY_SEEN_KEY)
        return raw.decode() if isinstance(raw, bytes) and raw else None

    def set_registry_seen(self, version: str) -> None:
        self.client.set(REGISTRY_SEEN_KEY, version)

    # ----- vectors -----------------------------------------------------------------------

    def put_batch(self, vectors: Sequence[StoredVector]) -> None:
        """Write vectors: each becomes its user's newest under its version, atomically per
        user (history trimmed, TTL renewed). A vector older (by window version) than the
        stored newest is skipped; one of the same window version replaces it."""
        pending = list(vectors)
        while pending:  # a (user, version) twice in one call: later ones in a later round
            seen: set[tuple[str, str]] = set()
            now: dict[str, list[StoredVector]] = defaultdict(list)
            later: list[StoredVector] = []
            for v in pending:
                key = (v.user_id, v.model_version)
                (later if key in seen else now[v.user_id]).append(v)
                seen.add(key)
            self.write([UserWrite(uid, vs) for uid, vs in now.items()])
            pending = later

    def write(self, users: Sequence[UserWrite]) -> WriteResult:
        """The refresher's write: vectors (any versions) and conditional dirty clears,
        one atomic script call per bucket."""
        by_bucket: dict[int, list[UserWrite]] = defaultdict(list)
        for u in users:
            by_bucket[layout.bucket(u.user_id)].append(u)
        ttl_ms = int(self.ttl_s * 1000) if self.ttl_s else 0
        calls: list[tuple[list[bytes], list[Any]]] = []
        widths: list[int] = []
        for b, group in by_bucket.items():
            vers = sorted({check_version(v.model_version) for u in group for v in u.vectors})
            keys: list[bytes] = [layout.dirty_key(b)]
            args: list[Any] = [self.history, ttl_ms, len(vers)]
            for u in group:
                by_ver = {v.model_version: v for v in u.vectors}
                keys.append(layout.meta_key(u.user_id))
                keys += [vector_key(u.user_id, ver) for ver in vers]
                expect = "" if u.expect_window_version is None else str(u.expect_window_version)
                args += [u.user_id, expect]
                args += [
                    pack_vector(by_ver[ver], self.dtype) if ver in by_ver else b"" for ver in vers
                ]
            calls.append((keys, args))
            widths.append(len(vers))
        res = WriteResult()
        for r, n in zip(self._eval("write", calls), widths, strict=True):
            codes = [int(x) for x in r]
            for i in range(0, len(codes), n + 1):
                cleared = codes[i]
                res.cleared += cleared == 1
                res.still_dirty += cleared == 0
                for c in codes[i + 1 : i + 1 + n]:
                    res.skipped += c == -2
                    res.written += c >= -1
                    if c >= 0:
                        res.replaced_computed_at_ms.append(c)
        return res

    def get_batch(
        self, user_ids: Sequence[str], version: str, history: int = 1
    ) -> list[list[StoredVector]]:
        """Per requested id, in request order, its vectors under `version`, newest first
        (at most `history`); [] when not found. One pipelined read per shard."""
        check_version(version)
        n = max(1, history)
        calls = [(k, ("LRANGE", k, 0, n - 1)) for k in (vector_key(u, version) for u in user_ids)]
        results = sharded.execute(self.client, calls)
        _raise_first(results)
        return [
            [unpack_vector(uid, version, rec) for rec in recs]
            for uid, recs in zip(user_ids, results, strict=True)
        ]

    def read_raw(
        self, user_ids: Sequence[str], version: str, history: int, deadline: float
    ) -> list[Any]:
        """The LRANGE replies (raw record bytes, newest first) of `user_ids`, one pipelined
        write per shard then the replies, all on this thread, bounded by `deadline`
        (`time.monotonic()`; `scatter.DeadlineReached` when it passes)."""
        slots, cmds = packed_lranges(user_ids, version, max(1, history) - 1)
        results = self._reader.read_packed(self.client, slots, cmds, deadline)
        if any(map(isinstance, results, repeat(Exception))):
            _raise_first(results)
        return results

    def read_batch(
        self, user_ids: Sequence[str], version: str, history: int, deadline: float
    ) -> VectorBatch:
        """`get_batch` decoded into arrays (VectorBatch), read with `read_raw`: the serving
        path. Same values as `get_batch` (tests/serving/test_read_batch.py holds them
        together)."""
        return decode_batch(self.read_raw(user_ids, version, history, deadline), history)

    def close_reads(self) -> None:
        """Close the connections `read_raw` keeps (the client's own are the client's)."""
        self._reader.close()
