"""The properties of a batch of events as columns, converted in C (pyarrow).

`Tokenizer.static_matrix` reads each event's property dict once per property in Python
(~1 us an event with 8 properties); here the dicts of the whole batch become one Arrow
struct array in one call (missing keys and unknown names cost nothing), vocabulary ids come
from `pyarrow.compute.index_in`, numeric bins from one `searchsorted` per column, and only
the distinct out-of-vocabulary values of a column go back to Python to be hashed. Measured
against the column-by-column Python path on 16k events, 2 cores: 1.35-1.9x on the
synthetic schema (6 categorical, 2 numeric properties, ~3 on an event), 2.2x on Instacart's
(2 categorical, 5 numeric, all on every event); docs/benchmarks.md, 2026-12-03.

The conversion is strict where the Python path is lenient: a number in a string-valued
categorical column (a bool property's numbers are read as numbers), a string in a numeric
or bool column, an integer past int64, a non-dict mapping or a string Arrow cannot encode
makes `fill` return None, and the caller tokenises that batch in Python, which gives every
such value its id. Both paths give the same ids (tests/encoder/test_tokenizer.py).

Example: spec ``c0 = sku`` with vocab ``(a1, a2)`` and 8 buckets, ``n0 = amount`` with
edges ``(5, 20)``; props ``[{"sku": "a2"}, {"sku": "zz", "amount": 9.5}, {"other": "q"}]``
give ``c0 = [2, 3 + crc32("zz") % 8, 0]``, ``n0 = [0, 2, 0]`` and found ``[1, 2, 0]`` (the
third event's unknown property is the caller's to count).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from encoder.features import FeatureSpec, value_key

# What a strict conversion raises for a value of the other kind (ArrowInvalid is a
# ValueError, ArrowTypeError a TypeError; UnicodeEncodeError for lone surrogates).
_REFUSED = (pa.ArrowException, TypeError, ValueError, OverflowError)

CatId = Callable[[int, str], int]  # (categorical column, value key) -> its id


class Columns:
    """Vectorised static ids for one `FeatureSpec` (the categorical and numeric columns)."""

    def __init__(self, spec: FeatureSpec) -> None:
        names = spec.property_names
        self.usable = len(set(names)) == len(names)  # one Arrow field per property
        # a bool property's values are numbers (0 / 1, true / false): read as float64 and
        # keyed like the Python path (`value_key`), every other categorical as strings
        self._bool = [c.kind == "bool" for c in spec.categorical]
        self._type = pa.struct(
            [
                (c.name, pa.float64() if b else pa.string())
                for c, b in zip(spec.categorical, self._bool, strict=True)
            ]
            + [(n.name, pa.float64()) for n in spec.numeric]
        )
        self._vocabs = [pa.array(list(c.vocab), pa.string()) for c in spec.categorical]
        self._edges = [np.asarray(n.edges, dtype=np.float64) for n in spec.numeric]

    def fill(
        self, props: Sequence[Mapping[str, Any]], out: np.ndarray, cat_id: CatId
    ) -> np.ndarray | None:
        """Write the categorical then numeric ids into ``out[:, 1:]`` (N, S) and return how
        many of the spec's properties each event carries (N,), or None, leaving `out` as it
        was, when a value needs the Python path (see the module docstring)."""
        if not self.usable or not props:
            return None
        try:
            struct = pa.array(props, type=self._type)
        except _REFUSED:
            return None
        found = np.zeros(len(props), dtype=np.int64)
        col = 1
        for c, vocab in enumerate(self._vocabs):
            values = struct.field(c)
            valid = values.is_valid().to_numpy(zero_copy_only=False)
            found += valid
            if self._bool[c]:
                out[:, col] = _numbers_as_keys(c, values, valid, cat_id)
                col += 1
                continue
            idx = pc.fill_null(pc.index_in(values, value_set=vocab), -1).to_numpy()
            ids = (idx + 1).astype(np.int32)
            ids[~valid] = 0
            oov = valid & (idx < 0)
            if oov.any():
                ids[oov] = _hashed(c, values.filter(pa.array(oov)), cat_id)
            out[:, col] = ids
            col += 1
        for j, edges in enumerate(self._edges):
            values = struct.field(len(self._vocabs) + j)
            found += values.is_valid().to_numpy(zero_copy_only=False)
            x = values.to_numpy(zero_copy_only=False)  # nulls -> NaN
            bins = np.searchsorted(edges, x, side="right") + 1
            out[:, col] = np.where(np.isfinite(x), bins, 0)
            col += 1
        return found


def _numbers_as_keys(c: int, values: pa.Array, valid: np.ndarray, cat_id: CatId) -> np.ndarray:
    """Ids of a numeric-valued categorical column: each distinct number keyed once."""
    ids = np.zeros(len(values), dtype=np.int32)
    x = values.to_numpy(zero_copy_only=False)[valid]
    if len(x):
        distinct, inverse = np.unique(x, return_inverse=True)
        keyed = [cat_id(c, value_key(float(v))) for v in distinct]
        ids[valid] = np.asarray(keyed, dtype=np.int32)[inverse.reshape(-1)]
    return ids


def _hashed(c: int, values: pa.Array, cat_id: CatId) -> np.ndarray:
    """Ids of out-of-vocabulary values, each distinct value hashed once."""
    distinct = pc.unique(values)
    ids = np.fromiter((cat_id(c, v) for v in distinct.to_pylist()), np.int32, len(distinct))
    return ids[pc.index_in(values, value_set=distinct).to_numpy()]
