"""The short-term state ingest keeps beside the windows (issue #17; LAYOUT.md "Short-term
state"): for each model version that is written (active, ready, back-filling) and has a
short-term head, the head's row of every event an APPLY adds, in the same atomic step.
Serving then folds a user's new events from those rows (read with the vector, no script, no
event decoding) instead of reading the window.

`StateKeeper.rows(events)` gives the `StateSpec` (which versions, each row's length) and the
(N, sum H) float32 rows of a batch's events; the versions are read from the store every
`every_s` (a cutover's new version gets rows from then on; until then, and for events
applied without rows, serving reads the window: slower, the same answer).

After the APPLY, `StateKeeper.fold_deltas(users)` goes one step further for those users:
it reads each one's vector and state as serving would, computes the head's output and
stores it as the user's delta (LAYOUT.md "Short-term delta"), so that serving only adds it
(no state parse, no matmul on the request path). Until it is stored, and whenever an APPLY
or a refresh has moved past it, serving folds the state itself: the same answer.

A failure here (store, registry, tokenizer) is logged and costs the state or the delta,
never the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from contract.codec import Decoded
from contract.events import Event
from contract.record import unpack_record
from services.common.heads import Head, HeadSource
from services.store import deltas
from services.store.folding import fold
from services.store.layout import STATE_CAP, StateSpec
from services.store.recent import Recent
from services.store.records import VectorBatch

log = logging.getLogger(__name__)
WRITTEN = ("active", "ready", "backfilling")  # the version states the refreshers write


class DeltaStore(Protocol):
    """What `fold_deltas` uses of `services.store.vectors.VectorStore`."""

    def read_recent(
        self, user_ids: Sequence[str], version: str, history: int, max_events: int,
        deadline: float, *, row_dim: int = 0, use_deltas: bool = True,
    ) -> tuple[VectorBatch, Recent]: ...  # fmt: skip

    def write_deltas(
        self, version: str, user_ids: Sequence[str], covered: np.ndarray, values: list[bytes]
    ) -> int: ...


class StateKeeper:
    """Which versions' short-term state ingest keeps, and each event's rows for them.

    Args:
        versions: the store's model versions and their states (`VectorStore.versions`).
        heads: the versions' heads (`RegistryHeads` over the model registry).
        every_s: how often the versions are read again.
        cap: entries a user's state keeps per version (LAYOUT.md).
        store: where `fold_deltas` reads vectors and states and writes deltas (None: no
            deltas; serving folds the state).
    """

    def __init__(
        self, versions: Callable[[], dict[str, str]], heads: HeadSource, every_s: float = 5.0,
        cap: int = STATE_CAP, store: DeltaStore | None = None, timeout_s: float = 5.0,
    ) -> None:  # fmt: skip
        self.cap = cap
        self.store = store
        self.timeout_s = timeout_s
        self._versions = versions
        self._heads = heads
        self._every_s = every_s
        self._current: list[tuple[str, Head]] = []
        self._read_at = -float("inf")
        self._logged_at = -float("inf")

    def current(self) -> list[tuple[str, Head]]:
        """The written versions with a head, in name order (read again every `every_s`)."""
        now = time.monotonic()
        if now - self._read_at >= self._every_s:
            self._read_at = now
            try:
                states = self._versions()
                got = [(v, self._heads.head(v)) for v in sorted(states) if states[v] in WRITTEN]
                self._current = [(v, h) for v, h in got if h is not None]
            except Exception as exc:  # the store away: keep the versions known
                self._log("reading the model versions failed", exc)
        return self._current

    def record_rows(self, records: Sequence[Decoded]) -> tuple[StateSpec | None, np.ndarray | None]:
        """`rows` of the records ingest decoded for the store (`decode_for_store`)."""
        if not self.current():
            return None, None
        try:
            events = [unpack_record(d.user_id, d.event_id.decode("utf-8"), d.record)
                      for d in records]  # fmt: skip
        except Exception as exc:
            self._log("decoding records for short-term rows failed", exc)
            return None, None
        return self.rows(events)

    def rows(self, events: Sequence[Event]) -> tuple[StateSpec | None, np.ndarray | None]:
        """(the spec, (N, sum H) float32 rows of `events` per version one after the other),
        or (None, None): no version keeps a state, or computing the rows failed (logged)."""
        heads = self.current()
        if not heads or not events:
            return None, None
        try:
            mats = [h.event_rows(events) for _, h in heads]
        except Exception as exc:  # a tokenizer bug must not stop ingest: no state this batch
            self._log("computing short-term rows failed", exc)
            return None, None
        spec = StateSpec(tuple((v, h.row_dim) for v, h in heads), self.cap)
        return spec, np.ascontiguousarray(np.concatenate(mats, axis=1), dtype="<f4")

    def fold_deltas(self, user_ids: Sequence[str]) -> tuple[int, int]:
        """After an APPLY of `user_ids`' events: for every kept version, the head's output
        for each user's events since its vector, stored as the user's delta where meta `v`
        has not moved since the read (`deltas.write_deltas`). Returns (deltas written,
        versions that failed: logged, serving folds their states instead); (0, 0) without a
        store."""
        if self.store is None or not user_ids:
            return 0, 0
        users = list(dict.fromkeys(user_ids))
        written = failed = 0
        for version, head in self.current():
            try:
                written += self._fold_one(version, head, users)
            except Exception as exc:  # the store away, a tokenizer bug: serving folds itself
                failed += 1
                self._log(f"computing short-term deltas of {version} failed", exc)
        return written, failed

    def _fold_one(self, version: str, head: Head, users: list[str]) -> int:
        assert self.store is not None
        deadline = time.monotonic() + self.timeout_s
        # right after the APPLY a stored delta rarely covers the window: read the state with
        # meta v in one round trip
        batch, recent = self.store.read_recent(users, version, 1, head.max_events, deadline,
                                               row_dim=head.row_dim, use_deltas=False)  # fmt: skip
        if batch.dim == 0 or recent.window_v is None:
            return 0
        folded = fold(head, np.ascontiguousarray(batch.vectors[:, 0]), batch.count > 0, recent)
        idx = np.flatnonzero(folded.events > 0)
        if not len(idx):
            return 0
        values = deltas.pack_deltas(batch.window_version[idx, 0], recent.window_v[idx],
                                    folded.newest_ms[idx], folded.events[idx],
                                    folded.short[idx])  # fmt: skip
        picked = [users[i] for i in idx.tolist()]
        return self.store.write_deltas(version, picked, recent.window_v[idx], values)

    def _log(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._logged_at > 60:
            self._logged_at = now
            log.warning("%s (no short-term state meanwhile; serving reads windows): %s",
                        what, exc)  # fmt: skip
