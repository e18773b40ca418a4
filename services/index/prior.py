"""The lookalike index, plus the population prior kept current beside it.

The cold-start fallback of GetEmbeddings is the *population prior*: the mean direction of
the vectors the index holds (all users of the served version), at their mean length. The
index keeps unit copies (it scores by cosine), while served vectors carry a length (it
counts what a window holds), so the prior is the normalised sum of the unit vectors times
the mean of the served lengths. Chosen because it is what the index already has in memory,
costs O(D) per update to keep exact (running float64 sums: add a user's new unit vector
and length, subtract their old ones), and for a cosine-scored ranker it is the best single
guess of an unknown user's direction, at a typical length. Segment priors (one per country
or acquisition channel) would need segment labels the serving path does not have; they are
not built.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from services.index.ann import LookalikeIndex
from services.index.config import IndexConfig


@dataclass(frozen=True, slots=True)
class Prior:
    """The population prior of one version: its vector (D,) and when it was last updated."""

    vector: np.ndarray
    computed_at_ms: int


class PriorIndex(LookalikeIndex):
    """A `LookalikeIndex` that also keeps the running sum of its unit vectors.

    Writers (the follower) are serialised by `_sum_lock`; searches are untouched.
    """

    def __init__(self, config: IndexConfig | None = None) -> None:
        super().__init__(config)
        self._sum = np.zeros(self.dim, dtype=np.float64)  # (D,) sum of unit vectors
        self._length_sum = 0.0  # sum of the served lengths (the index keeps each by row)
        self._sum_lock = threading.Lock()
        self._updated_ms: int | None = None

    def upsert(self, user_ids: Sequence[str], vectors: np.ndarray) -> None:
        ids = list(user_ids)
        with self._sum_lock:
            last = {u: i for i, u in enumerate(ids)}
            old = self.sum_of(last)  # (D,) the replaced vectors
            old_length = self.length_sum_of(last)
            super().upsert(ids, vectors)  # validates; raises before we touch the sum
            if not last:
                return
            raw = np.asarray(vectors, dtype=np.float64)[list(last.values())]  # (U, D)
            lengths = np.linalg.norm(raw, axis=1)  # (U,)
            self._sum += (raw / lengths[:, None]).sum(axis=0) - old
            self._length_sum += self.length_sum_of(last) - old_length
            self._updated_ms = int(time.time() * 1000)

    def delete(self, user_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(user_ids))
        with self._sum_lock:
            old = self.sum_of(ids)
            old_length = self.length_sum_of(ids)
            removed = super().delete(ids)
            if removed:
                self._sum -= old
                self._length_sum -= old_length
                self._updated_ms = int(time.time() * 1000)
            return removed

    @property
    def updated_at_ms(self) -> int | None:
        """Wall-clock ms of the last write that changed the index, or None."""
        return self._updated_ms

    def prior(self) -> Prior | None:
        """The mean direction of the indexed vectors at their mean length; None when empty
        or when the directions cancel out."""
        with self._sum_lock:
            if self.size == 0:
                return None
            s = self._sum.copy()
            length = self._length_sum / self.size
            at = self._updated_ms or 0
        norm = float(np.linalg.norm(s))
        if norm < 1e-9 * max(1, self.size):
            return None
        return Prior((s / norm * length).astype(np.float32), at)
