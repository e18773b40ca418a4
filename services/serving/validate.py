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


# A query's norm must lie here: its square is then a normal float32, so no float32 step
# on the way (the index's normalisation, a dot product) underflows to 0 or overflows to inf.
MIN_NORM, MAX_NORM = 1e-18, 1e18


def vector(values: Sequence[float], dim: int, field: str) -> np.ndarray:
    """dim finite values, not all zero, of a norm in [MIN_NORM, MAX_NORM] -> the unit
    vector (D,) float32 (only the direction counts: scores are cosines).

    Example: [3, 4] -> [0.6, 0.8]; 64 x 1e-30 (norm 8e-30: its square underflows float32)
    and 64 x 1e30 (its square overflows) are refused (issue #18).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (dim,):
        raise invalid(f"{field} has {v.size} values; the served dimension is {dim}")
    bad = ~np.isfinite(v.astype(np.float32))  # what the wire carried (float32)
    if bad.any():
        raise invalid(f"{field}[{int(np.flatnonzero(bad)[0])}] is NaN or infinite")
    if not v.any():
        raise invalid(f"{field} is all zeros")
    norm = float(np.sqrt(np.dot(v, v)))  # float64: exact enough for any float32 input
    if not MIN_NORM <= norm <= MAX_NORM:
        raise invalid(
            f"{field} has norm {norm:.3g}, outside [{MIN_NORM:g}, {MAX_NORM:g}] where float32"
            " arithmetic holds it; scale it (only its direction counts)"
        )
    return (v / norm).astype(np.float32)
