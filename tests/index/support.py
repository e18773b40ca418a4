"""Shared helpers of the index tests: exact truth and found rows."""

from __future__ import annotations

import faiss
import numpy as np

from services.index.neighbours import Neighbours


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers (Q, k) of the k nearest base rows (inner product) to each query."""
    return faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def found_rows(hits: Neighbours) -> np.ndarray:
    """Neighbours of an index whose user ids are row numbers -> rows (Q, k), -1 if empty."""
    return np.where(hits.ids == b"", b"-1", hits.ids).astype(np.int64)
