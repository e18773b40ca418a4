"""What the serving core needs from the outside, as small Protocols: the vector store (the
subset of `services.store.vectors.VectorStore` it reads) and the lookalike index in service.
Tests hand in fakes (a slow store, a failing one) through the same doors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from services.serving.prior import PriorIndex
    from services.store.records import StoredVector, VectorBatch


class VectorReader(Protocol):
    def active_version(self) -> str | None: ...

    def versions(self) -> dict[str, str]: ...

    def get_batch(
        self, user_ids: Sequence[str], version: str, history: int = 1
    ) -> list[list[StoredVector]]: ...

    def read_batch(
        self, user_ids: Sequence[str], version: str, history: int, deadline: float
    ) -> VectorBatch:
        """GetEmbeddings' read; runs on the handler thread, so it must return or raise
        `services.store.scatter.DeadlineReached` by `deadline` (time.monotonic())."""
        ...


@dataclass(frozen=True, slots=True)
class ServedIndex:
    """The lookalike index in service and the one model version it holds.

    `lag` (when a follower feeds the index) gives its update-log lag in records, or None
    while unknown.
    """

    version: str
    index: PriorIndex
    lag: Callable[[], int | None] | None = None


class IndexSource(Protocol):
    def current(self) -> ServedIndex | None: ...


@dataclass(frozen=True, slots=True)
class Prior:
    """The population prior of one version: unit vector (D,) and when it was last updated."""

    vector: np.ndarray
    computed_at_ms: int
