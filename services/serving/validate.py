"""Request checks shared by the methods; each failure is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from services.serving.errors import invalid


def user_ids(ids: Sequence[str], field: str, limit: int, max_id_bytes: int) -> list[str]:
    """1..limit non-empty ids of at most max_id_bytes UTF-8 bytes each."""
    if not ids:
        raise invalid(f"{field} is empty")
    if len(ids) > limit:
        raise invalid(f"{field} has {len(ids)} ids; at most {limit} a request")
    out = list(ids)
    if all(out) and max(map(len, out)) * 4 <= max_id_bytes:  # a code point is <= 4 bytes
        return out
    for i, u in enumerate(out):
        if not u:
            raise invalid(f"{field}[{i}] is empty")
        if len(u) > max_id_bytes or len(u.encode("utf-8")) > max_id_bytes:
            raise invalid(f"{field}[{i}] is longer than {max_id_bytes} bytes")
    return out


def one_id(u: str, field: str, max_id_bytes: int) -> str:
    if not u:
        raise invalid(f"{field} is empty")
    if len(u.encode("utf-8")) > max_id_bytes:
        raise invalid(f"{field} is longer than {max_id_bytes} bytes")
    return u


def int_range(value: int, field: str, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise invalid(f"{field} must be in [{lo}, {hi}], got {value}")
    return value


def score(value: float | None, field: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise invalid(f"{field} must be a finite number, got {value}")
    return value


def vector(values: Sequence[float], dim: int, field: str) -> np.ndarray:
    """dim finite values, not all zero -> (D,) float32."""
    v = np.asarray(values, dtype=np.float32)
    if v.shape != (dim,):
        raise invalid(f"{field} has {v.size} values; the served dimension is {dim}")
    bad = ~np.isfinite(v)
    if bad.any():
        raise invalid(f"{field}[{int(np.flatnonzero(bad)[0])}] is NaN or infinite")
    if not v.any():
        raise invalid(f"{field} is all zeros")
    return v
