"""What the serving core needs from the outside, as small Protocols: the vector store (the
subset of `services.store.vectors.VectorStore` it reads) and the lookalike index in service
(`services.index.holder.IndexHolder` is the real one). Tests hand in fakes (a slow store, a
failing one) through the same doors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from services.index.holder import ServedIndex
    from services.store.recent import Recent
    from services.store.records import StoredVector, VectorBatch


class VectorReader(Protocol):
    def active_version(self) -> str | None: ...

    def versions(self) -> dict[str, str]: ...

    def score_columns(self, version: str) -> str | None: ...

    def get_batch(
        self, user_ids: Sequence[str], version: str, history: int = 1
    ) -> list[list[StoredVector]]: ...

    def read_batch(
        self, user_ids: Sequence[str], version: str, history: int, deadline: float
    ) -> VectorBatch:
        """GetEmbeddings' read; runs on the handler thread, so it must return or raise
        `services.store.router.DeadlineReached` by `deadline` (time.monotonic())."""
        ...

    def read_recent(
        self, user_ids: Sequence[str], version: str, history: int, max_events: int,
        deadline: float, row_dim: int = 0,
    ) -> tuple[VectorBatch, Recent]:  # fmt: skip
        """`read_batch` plus what each user's window gained after the newest vector's marker
        (the short-term head's input: the events, or with `row_dim` their rows from the
        short-term state), in the same round trip; same deadline rule."""
        ...

    # GetAudience's reads (`services.store.audience` over the store's router)
    def audience_counts(
        self, version: str, column: int, min_score: float, max_score: float = ...
    ) -> np.ndarray: ...

    def audience_members(
        self, version: str, column: int, min_score: float, spans: Sequence[tuple[int, int, int]],
        max_score: float = ...,
    ) -> list[tuple[list[str], list[float]]]: ...  # fmt: skip

    def audience_threshold(self, version: str, column: int, n: int) -> float: ...


class IndexSource(Protocol):
    def current(self) -> ServedIndex | None: ...
