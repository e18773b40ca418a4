"""The properties of a batch of events as columns, converted in C (pyarrow).

`Tokenizer.static_matrix` reads each event's property dict once per property in Python
(~1 us an event with 8 properties); here the dicts of the whole batch become one Arrow
struct array in one call (missing keys and unknown names cost nothing), vocabulary ids come
from `pyarrow.compute.index_in`, numeric bins from one `searchsorted` per column, and only
the distinct out-of-vocabulary values of a column go back to Python to be hashed. Measured
against the column-by-column Python path on 16k events, 2 cores: 1.35-1.9x on the
synthetic schema (6 categorical, 2 numeric properties, ~3 on an event), 2.2x on Instacart's
(2 categorical, 5 numeric, all on every event); docs/benchmarks.md, 2026-12-03.

The conversion is strict where tokenising is lenient: a number in a string-valued
categorical column (a bool property's numbers are read as numbers), a string in a numeric
or bool column, an integer past int64 or a string Arrow cannot encode makes the batch's
conversion fail; the columns are then converted one by one, and a column that still fails
is read in Python (one pass over the batch per such column), which gives every such value
its id. Either way the ids are `Tokenizer.static_ids`' (tests/encoder/test_tokenizer.py).

Example: spec ``c0 = sku`` with vocab ``(a1, a2)`` and 8 buckets, ``n0 = amount`` with
edges ``(5, 20)``; props ``[{"sku": "a2"}, {"sku": "zz", "amount": 9.5}, {"other": "q"}]``
give ``c0 = [2, 3 + crc32("zz") % 8, 0]``, ``n0 = [0, 2, 0]`` and found ``[1, 2, 0]`` (the
third event's unknown property is the caller's to count).
"""

from __future__ import annotations

import math
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
    """Static ids of a batch for one `FeatureSpec` (its categorical and numeric columns)."""

    def __init__(self, spec: FeatureSpec) -> None:
        self._names = spec.property_names
        # a bool property's values are numbers (0 / 1, true / false): read as float64 and
        # keyed like the Python path (`value_key`), every other categorical as strings
        self._bool = [c.kind == "bool" for c in spec.categorical]
        self._types = [pa.float64() if b else pa.string() for b in self._bool] + [
            pa.float64() for _ in spec.numeric
        ]
        self._struct = pa.struct(list(zip(self._names, self._types, strict=True)))
        self._vocabs = [pa.array(list(c.vocab), pa.string()) for c in spec.categorical]
        self._edges = [np.asarray(n.edges, dtype=np.float64) for n in spec.numeric]
        self.python: tuple[str, ...] = ()  # the last batch's columns read in Python

    def fill(
        self, props: Sequence[Mapping[str, Any]], out: np.ndarray, cat_id: CatId
    ) -> np.ndarray:
        """Write the categorical then numeric ids into ``out[:, 1:]`` (N, S) and return how
        many of the spec's properties each event carries (N,)."""
        found = np.zeros(len(props), dtype=np.int64)
        columns = self._columns(props)
        self.python = tuple(
            n for n, a in zip(self._names, columns, strict=True) if isinstance(a, list)
        )
        col = 1
        for c, vocab in enumerate(self._vocabs):
            values = columns[c]
            if isinstance(values, list):
                ids, valid = _python_keys(c, values, cat_id)
            else:
                valid = values.is_valid().to_numpy(zero_copy_only=False)
                if self._bool[c]:
                    ids = _numbers_as_keys(c, values, valid, cat_id)
                else:
                    ids = _vocab_ids(c, values, valid, vocab, cat_id)
            out[:, col] = ids
            found += valid
            col += 1
        for j, edges in enumerate(self._edges):
            values = columns[len(self._vocabs) + j]
            if isinstance(values, list):
                x, valid = _python_numbers(values)
            else:
                x = values.to_numpy(zero_copy_only=False)  # nulls -> NaN
                valid = values.is_valid().to_numpy(zero_copy_only=False)
            bins = np.searchsorted(edges, x, side="right") + 1
            out[:, col] = np.where(np.isfinite(x), bins, 0)
            found += valid
            col += 1
        return found

    def _columns(self, props: Sequence[Mapping[str, Any]]) -> list[pa.Array | list[Any]]:
        """Each property's column: one struct conversion, else column by column; a column
        Arrow refuses stays the Python list of its values (None: absent)."""
        try:
            struct = pa.array(props, type=self._struct)
            return [struct.field(i) for i in range(len(self._names))]
        except _REFUSED:
            pass
        out: list[pa.Array | list[Any]] = []
        for name, typ in zip(self._names, self._types, strict=True):
            values = [p.get(name) for p in props]
            try:
                out.append(pa.array(values, type=typ))
            except _REFUSED:
                out.append(values)
        return out


def _vocab_ids(
    c: int, values: pa.Array, valid: np.ndarray, vocab: pa.Array, cat_id: CatId
) -> np.ndarray:
    """Ids of a string column: vocabulary ids, each distinct other value hashed once."""
    idx = pc.fill_null(pc.index_in(values, value_set=vocab), -1).to_numpy()
    ids = (idx + 1).astype(np.int32)  # 0: absent (null) or not in the vocabulary
    oov = valid & (idx < 0)
    if oov.any():
        rest = values.filter(pa.array(oov))
        distinct = pc.unique(rest)
        keyed = np.fromiter((cat_id(c, v) for v in distinct.to_pylist()), np.int32, len(distinct))
        ids[oov] = keyed[pc.index_in(rest, value_set=distinct).to_numpy()]
    return ids


def _numbers_as_keys(c: int, values: pa.Array, valid: np.ndarray, cat_id: CatId) -> np.ndarray:
    """Ids of a numeric-valued categorical column: each distinct number keyed once."""
    ids = np.zeros(len(values), dtype=np.int32)
    x = values.to_numpy(zero_copy_only=False)[valid]
    if len(x):
        distinct, inverse = np.unique(x, return_inverse=True)
        keyed = [cat_id(c, value_key(float(v))) for v in distinct]
        ids[valid] = np.asarray(keyed, dtype=np.int32)[inverse.reshape(-1)]
    return ids


def _python_keys(c: int, vals: list[Any], cat_id: CatId) -> tuple[np.ndarray, np.ndarray]:
    """Ids and presence of a categorical column of any values, in Python."""
    n = len(vals)
    keys = (None if v is None else v if isinstance(v, str) else value_key(v) for v in vals)
    ids = np.fromiter((0 if k is None else cat_id(c, k) for k in keys), np.int32, n)
    return ids, np.fromiter((v is not None for v in vals), np.bool_, n)


def _python_numbers(vals: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Values (NaN: absent or not a number) and presence of a numeric column, in Python."""
    n = len(vals)
    x = np.fromiter(
        (math.nan if v is None or isinstance(v, str) else float(v) for v in vals), np.float64, n
    )
    return x, np.fromiter((v is not None for v in vals), np.bool_, n)
