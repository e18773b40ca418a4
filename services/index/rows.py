"""What the lookalike index keeps per row besides the faiss structure, and input checks.

`RowCopy` is the float16 copy of each row's unit vector that IVF-PQ (whose codes are lossy)
re-ranks with and reads vectors back from. `unit_queries` is on the search path: one
fused norm for the batch and the checks done on it, with the detailed checks of
`checked_vectors` only when it finds something wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np

_fx: Any = faiss  # faiss's stubs miss much of its SWIG surface
_ptr = _fx._swigfaiss.swig_ptr  # noqa: SLF001  # faiss.swig_ptr is a Python wrapper of it
_F32 = np.dtype(np.float32)
_UNIT = 1e-6  # a squared norm this close to 1 is used as is (scores off by <= 5e-7)
_norm2 = _fx.fvec_norm_L2sqr
_norms2 = _fx.fvec_norms_L2sqr


class RowCopy:
    """float16 unit vectors by row: (capacity, D), 2 bytes a component."""

    def __init__(self, dim: int) -> None:
        self.data = np.zeros((0, dim), dtype=np.float16)

    def grow(self, capacity: int) -> None:
        """Room for `capacity` rows; the new ones hold nothing until `put` (every row is
        put when it is assigned, before any read)."""
        data = np.empty((capacity, self.data.shape[1]), np.float16)
        data[: len(self.data)] = self.data
        self.data = data

    def put(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        self.data[rows] = vectors

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """rows (R,) -> (R, D) float32."""
        return self.data[rows].astype(np.float32)


class RowTable:
    """The index's rows: the user holding each as UTF-8 bytes (`ids`: the batch gather of
    the search paths), each vector's length as given, and the float16 copy where the
    structure needs one; and the lookup from user id to row.

    The lookup keeps no Python object per user: the ids' 64-bit `hash` values sorted, with
    their rows (16 bytes a user; a dict of str -> int held ~110 bytes a user and the ids'
    str objects besides, a third of the index's memory at 1M users). A lookup is a binary
    search and a comparison with `ids`; the rare id whose hash another held id has already
    is kept in a small dict (`_extra`). Inserts and removals move the sorted arrays (a
    memmove of 16 bytes a user per batch).

    The last slot of `ids` stays empty (b""), so faiss's -1 maps to no user. Freed rows go
    to `free` (reusable at once) or, where a structure may still hold their entries, to
    `pending` until a rebuild has dropped them. Capacity grows by a quarter at a time.
    Callers hold the index's write lock for changes.
    """

    def __init__(self, dim: int, with_copy: bool, hasher: Callable[[str], int] = hash) -> None:
        self._hash = hasher  # (tests hand in one that clashes)
        self.ids = np.zeros(1, dtype="S1")  # (capacity + 1,)
        self.lengths = np.zeros(0, dtype=np.float64)  # (capacity,)
        self.copy = RowCopy(dim) if with_copy else None
        self._keys = np.zeros(0, dtype=np.int64)  # sorted hash() of the held ids ...
        self._krows = np.zeros(0, dtype=np.int64)  # ... and their rows
        self._extra: dict[str, int] = {}  # held ids whose hash is another held id's key
        self.next_row = 0
        self.free: list[int] = []
        self.pending: list[int] = []

    def __len__(self) -> int:
        """Users held."""
        return len(self._keys) + len(self._extra)

    def get(self, user_id: str) -> int | None:
        """The user's row, or None."""
        keys, h = self._keys, self._hash(user_id)
        at = int(keys.searchsorted(h))
        if at < len(keys) and keys[at] == h:
            row = int(self._krows[at])
            if self.ids[row] == user_id.encode("utf-8", "surrogatepass"):
                return row
        return self._extra.get(user_id)

    def find(self, user_ids: Sequence[str]) -> np.ndarray:
        """(N,) the users' rows, -1 where not held."""
        n = len(user_ids)
        out = np.full(n, -1, dtype=np.int64)
        keys = self._keys
        if n and len(keys):
            h = np.fromiter(map(self._hash, user_ids), np.int64, n)
            at = np.minimum(keys.searchsorted(h), len(keys) - 1)
            hit = np.flatnonzero(keys[at] == h)
            rows = self._krows[at[hit]]
            want = np.array(
                [user_ids[i].encode("utf-8", "surrogatepass") for i in hit.tolist()], dtype=bytes
            )
            same = self.ids[rows] == want if len(hit) else np.zeros(0, bool)
            out[hit[same]] = rows[same]
        if self._extra:
            for i in np.flatnonzero(out < 0).tolist():
                out[i] = self._extra.get(user_ids[i], -1)
        return out

    def forget(self, user_ids: Sequence[str]) -> list[int]:
        """Drops the held ones of `user_ids` (distinct) from the lookup; their rows (the
        caller releases them)."""
        rows = self.find(user_ids)
        held = np.flatnonzero(rows >= 0)
        if not len(held):
            return []
        in_keys = []
        for i in held.tolist():
            if self._extra.pop(user_ids[i], None) is None:
                in_keys.append(i)
        if in_keys:
            h = np.fromiter((self._hash(user_ids[i]) for i in in_keys), np.int64, len(in_keys))
            at = self._keys.searchsorted(h)
            self._keys = np.delete(self._keys, at)
            self._krows = np.delete(self._krows, at)
        return rows[held].tolist()

    def assign(self, users: list[str]) -> np.ndarray:
        """New rows (N,) for these users (not yet held), recorded under their ids."""
        n = len(users)
        reuse = min(n, len(self.free))
        rows = np.empty(n, dtype=np.int64)
        rows[:reuse] = [self.free.pop() for _ in range(reuse)]
        fresh = n - reuse
        if self.next_row + fresh > len(self.lengths):
            self._grow(max(1024, self.next_row + fresh, len(self.lengths) * 5 // 4))
        rows[reuse:] = np.arange(self.next_row, self.next_row + fresh)
        self.next_row += fresh
        encoded = [u.encode() for u in users]
        width = max(map(len, encoded), default=1)
        if width > self.ids.itemsize:  # a longer id than any before: widen the table
            self.ids = self.ids.astype(f"S{width}")
        self.ids[rows] = encoded
        self._insert(users, rows)
        return rows

    def _insert(self, users: list[str], rows: np.ndarray) -> None:
        """Adds (distinct, not held) users at `rows` to the lookup."""
        h = np.fromiter(map(self._hash, users), np.int64, len(users))
        order = np.argsort(h, kind="stable")
        h, rows = h[order], rows[order]
        clash = np.zeros(len(h), dtype=bool)  # the key is taken: by a held id, or one before
        clash[1:] = h[1:] == h[:-1]
        keys = self._keys
        if len(keys):
            at = np.minimum(keys.searchsorted(h), len(keys) - 1)
            clash |= keys[at] == h
        for i in np.flatnonzero(clash).tolist():
            self._extra[users[int(order[i])]] = int(rows[i])
        h, rows = h[~clash], rows[~clash]
        at = keys.searchsorted(h)
        self._keys, self._krows = np.insert(keys, at, h), np.insert(self._krows, at, rows)

    def release(self, rows: list[int], reuse_now: bool) -> None:
        """Rows whose users left them (dropped from the lookup already: `forget`)."""
        if rows:
            self.ids[rows] = b""
            (self.free if reuse_now else self.pending).extend(rows)

    def live(self, rows: np.ndarray) -> np.ndarray:
        """Which of rows (any shape; -1 allowed) hold a user."""
        return self.ids[rows] != b""

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.live(np.arange(self.next_row)))

    def bytes(self) -> dict[str, int]:
        """Bytes held: `ids` (the id table and the lookup's arrays; the rare clashes' dict
        estimated at 200 bytes an entry), `rows` (lengths) and `copy`."""
        ids = self.ids.nbytes + self._keys.nbytes + self._krows.nbytes + 200 * len(self._extra)
        copy = self.copy.data.nbytes if self.copy is not None else 0
        return {"ids": ids, "rows": self.lengths.nbytes, "copy": copy}

    def _grow(self, capacity: int) -> None:
        def longer(a: np.ndarray, extra: int) -> np.ndarray:
            out = np.zeros(len(a) + extra, dtype=a.dtype) if a.dtype != object else None
            if out is None:
                out = np.full(len(a) + extra, None, dtype=object)
            out[: len(a) - 1] = a[:-1]  # the empty last slot moves to the new end
            return out

        extra = capacity - len(self.lengths)
        self.ids = longer(self.ids, extra)
        self.lengths = np.concatenate([self.lengths, np.zeros(extra, np.float64)])
        if self.copy is not None:
            self.copy.grow(capacity)


def checked_vectors(x: np.ndarray, dim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) finite non-zero rows -> (unit float32 rows (N, D), float64 lengths (N,)), or
    ValueError naming the first bad row."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what} must have shape (N, {dim}), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{what} must be real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{what} row {bad} has NaN or infinite values")
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))  # (N,) no overflow
    if len(arr) and not (norms > 0).all():
        raise ValueError(f"{what} row {int(np.flatnonzero(norms == 0)[0])} is all zeros")
    unit = arr * (1.0 / norms).astype(np.float32)[:, None] if len(arr) else arr
    return np.ascontiguousarray(unit, dtype=np.float32), norms


def unit_queries(x: np.ndarray, dim: int) -> np.ndarray:
    """(Q, D) queries -> unit float32 rows (Q, D), C-contiguous (one query that is unit
    already comes back as given: nothing writes to it).

    The squared norms come from faiss's C loop (one call for the batch) and are checked as
    numbers: a NaN, infinite or zero row (or a squared norm past float32) makes them
    non-finite or zero, and `checked_vectors` then checks and names the row.
    """
    arr = x if type(x) is np.ndarray else np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != dim:
        return checked_vectors(arr, dim, "queries")[0]
    if arr.dtype is not _F32 or not arr.flags.c_contiguous:
        if arr.dtype.kind not in "fiu":
            return checked_vectors(arr, dim, "queries")[0]
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    n = len(arr)
    if n == 1:  # the serving path
        n2 = _norm2(_ptr(arr), dim)
        if abs(n2 - 1.0) <= _UNIT:  # already unit (an index vector, a normalised mean)
            return arr
        if 0.0 < n2 < math.inf:
            return arr * (1.0 / math.sqrt(n2))  # a Python float keeps float32
    elif n:
        n2s = np.empty(n, dtype=np.float32)
        _norms2(_ptr(n2s), _ptr(arr), dim, n)
        if math.isfinite(n2s.sum()) and n2s.min() > 0:
            return arr / np.sqrt(n2s)[:, None]
    return checked_vectors(arr, dim, "queries")[0]


def checked_ids(user_ids: Sequence[str]) -> list[str]:
    """A list of the ids, or ValueError. NUL is refused: the index's id table is a numpy
    bytes array, which cannot keep a trailing NUL."""
    if isinstance(user_ids, str | bytes):
        raise ValueError("user_ids must be a sequence of strings, not one string")
    ids = list(user_ids)
    for u in ids:
        if not isinstance(u, str) or not u or "\x00" in u:
            raise ValueError(f"user ids must be non-empty strings without NUL, got {u!r}")
    return ids
