"""What the lookalike index keeps per row besides the faiss structure, and input checks.

`RowCopy` is the float16 copy of each row's unit vector that IVF-PQ (whose codes are lossy)
re-ranks with and reads vectors back from. `unit_queries` is on the search path: one
fused norm for the batch and the checks done on it, with the detailed checks of
`checked_vectors` only when it finds something wrong.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence
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
        extra = np.zeros((capacity - len(self.data), self.data.shape[1]), np.float16)
        self.data = np.concatenate([self.data, extra])

    def put(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        self.data[rows] = vectors

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """rows (R,) -> (R, D) float32."""
        return self.data[rows].astype(np.float32)


class RowTable:
    """The index's rows: the user holding each, as str (`users`, for `search()`) and as
    UTF-8 bytes (`ids`, the batch gather of `search_arrays()`), each vector's length as
    given, and the float16 copy where the structure needs one.

    The last slot of `users` and `ids` stays empty (None, b""), so faiss's -1 maps to no
    user. Freed rows go to `free` (reusable at once) or, where a structure may still hold
    their entries, to `pending` until a rebuild has dropped them. Capacity grows by a
    quarter at a time. Callers hold the index's write lock for changes.
    """

    def __init__(self, dim: int, with_copy: bool) -> None:
        self.users = np.full(1, None, dtype=object)  # (capacity + 1,)
        self.ids = np.zeros(1, dtype="S1")  # (capacity + 1,)
        self.lengths = np.zeros(0, dtype=np.float64)  # (capacity,)
        self.copy = RowCopy(dim) if with_copy else None
        self.row_of: dict[str, int] = {}
        self.next_row = 0
        self.free: list[int] = []
        self.pending: list[int] = []

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
        self.row_of.update(zip(users, rows.tolist(), strict=True))
        self.users[rows] = users
        encoded = [u.encode() for u in users]
        width = max(map(len, encoded), default=1)
        if width > self.ids.itemsize:  # a longer id than any before: widen the table
            self.ids = self.ids.astype(f"S{width}")
        self.ids[rows] = encoded
        return rows

    def release(self, rows: list[int], reuse_now: bool) -> None:
        """Rows whose users left them (their ids were dropped from `row_of` already)."""
        if rows:
            self.users[rows] = None
            self.ids[rows] = b""
            (self.free if reuse_now else self.pending).extend(rows)

    def live(self, rows: np.ndarray) -> np.ndarray:
        """Which of rows (any shape; -1 allowed) hold a user."""
        return self.ids[rows] != b""

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.live(np.arange(self.next_row)))

    def bytes(self) -> dict[str, int]:
        """Estimated bytes held: `ids` (the two id tables, the id -> row dict, the id str
        objects, sampled, and the row ints), `rows` (lengths) and `copy`."""
        row_of = self.row_of
        sample = list(itertools.islice(row_of, 1000))
        # pymalloc hands out 16-byte multiples; row numbers above 256 are int objects of 32
        per_id = sum((sys.getsizeof(u) + 15) & ~15 for u in sample) / max(len(sample), 1)
        ids = self.users.nbytes + self.ids.nbytes + sys.getsizeof(row_of)
        ids += round(per_id * len(row_of)) + 32 * max(0, len(row_of) - 257)
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
        self.users, self.ids = longer(self.users, extra), longer(self.ids, extra)
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
