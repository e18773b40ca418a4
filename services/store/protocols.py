"""What the rest of Persona calls on the stores, and nothing more, as Protocols.

- `Windows`: ingest writes windows (`apply_packed`); the refresher reads them and the dirty
  marks those writes leave (`read`, `dirty_count`, `oldest_dirty`, `users`), of all buckets
  or of the ones a refresher's share holds.
- `Forgetter`: forget users (a privacy request, `persona forget`) or expire inactive ones
  (the refresher): window, dirty mark and vectors of every version go, a marker stays.
- `Vectors`: the refresher writes vectors and clears dirty marks (`write`); the cutover moves
  the active pointer and version states and records which buckets a back-fill has done
  (`backfilled`, `mark_backfilled`, `reset_backfill`); serving reads (`active_version`, `versions`,
  `get_batch`, `read_batch`; its own narrower port is `serving/ports.VectorReader`).

Implemented by `windows.WindowStore` / `vectors.VectorStore` (a Valkey / Redis node or
cluster) and `memory.MemoryWindows` / `memory.MemoryVectors`; tests/store/ runs one
contract suite against the three set-ups. `close()` releases what the store made (threads,
connections of its own), never the client it was given.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from services.store.forget import ForgetResult
from services.store.layout import StateSpec
from services.store.records import StoredVector, VectorBatch
from services.store.vectors import UserWrite, WriteResult
from services.store.windows import ApplyResult, PackedUpdate, Window


class Windows(Protocol):
    def apply_packed(
        self, updates: Iterable[PackedUpdate], rebuild: bool = False,
        states: StateSpec | None = None,
    ) -> ApplyResult: ...  # fmt: skip

    def read(self, user_ids: Sequence[str], newest: int | None = None) -> list[Window]: ...

    def dirty_count(self, buckets: Collection[int] | None = None) -> int: ...

    def oldest_dirty(
        self, per_bucket: int, buckets: Collection[int] | None = None
    ) -> list[tuple[str, int]]: ...

    def users(self, count: int = 1000) -> Iterator[str]: ...

    def close(self) -> None: ...


class Vectors(Protocol):
    def active_version(self) -> str | None: ...

    def versions(self) -> dict[str, str]: ...

    def history_versions(self) -> list[str]: ...

    def set_state(self, version: str, state: str) -> None: ...

    def set_active(self, version: str, require: str = "") -> str | None: ...

    def rollback(self) -> tuple[str | None, str]: ...

    def registry_seen(self) -> str | None: ...

    def set_registry_seen(self, version: str) -> None: ...

    def backfilled(self, version: str) -> set[int]: ...

    def mark_backfilled(self, version: str, buckets: Iterable[int]) -> None: ...

    def reset_backfill(self, version: str) -> None: ...

    def set_score_columns(self, version: str, columns_json: str) -> None: ...

    def score_columns(self, version: str) -> str | None: ...

    def write(self, users: Sequence[UserWrite]) -> WriteResult: ...

    def due_rescores(
        self, per_bucket: int, now_ms: int, buckets: Collection[int] | None = None
    ) -> list[str]: ...

    def get_batch(
        self, user_ids: Sequence[str], version: str, history: int = 1
    ) -> list[list[StoredVector]]: ...

    def read_batch(
        self, user_ids: Sequence[str], version: str, history: int, deadline: float
    ) -> VectorBatch: ...

    def close(self) -> None: ...


class Forgetter(Protocol):
    def forget(self, user_ids: Sequence[str], at_ms: int) -> ForgetResult: ...

    def expire(self, user_ids: Sequence[str], before_ms: int) -> ForgetResult: ...

    def inactive(self, before_ms: int, count: int = 1000) -> Iterator[list[str]]: ...

    def pending(self, count: int = 1000) -> Iterator[list[str]]: ...

    def tombstoned(self, user_ids: Sequence[str]) -> None: ...

    def held(self, user_ids: Sequence[str], versions: Sequence[str]) -> set[tuple[str, str]]: ...

    def versions(self) -> list[str]: ...

    def close(self) -> None: ...


if TYPE_CHECKING:  # mypy holds every implementation to its Protocol
    from services.store.forget import MemoryForgetter, StoreForgetter
    from services.store.memory import MemoryWindows
    from services.store.memory_vectors import MemoryVectors
    from services.store.vectors import VectorStore
    from services.store.windows import WindowStore

    def _implementations(
        w: WindowStore, mw: MemoryWindows, v: VectorStore, mv: MemoryVectors
    ) -> tuple[Windows, Windows, Vectors, Vectors]:
        return w, mw, v, mv

    def _forgetters(f: StoreForgetter, mf: MemoryForgetter) -> tuple[Forgetter, Forgetter]:
        return f, mf
