"""The short-term head at request time (issue #17): what the events since the last refresh
add to a served vector.

Each model version may carry a head (`encoder.shortterm.ShortTermHead`, trained and saved
with the encoder). `RegistryHeads` loads a version's head from the registry once, checks it
against its parity sample there, and keeps it: the head is per version, so a response read
under one version gets that version's head, and a cutover switches head and vectors
together. `combine` adds the head's output for the users with events after their vector's
marker (LAYOUT.md, vector layout 3; read in the same store round trip as the vectors,
`VectorStore.read_recent`).

Example: a user whose stored vector z folded in events up to (ts 100, "e7"), and who has
since had events e8, e9: the combined row is z + head.delta(z, [[e8, e9]]), its
`head_events` 2 and `newest_event_ms` e9's time; with no event since, the row is z and its
newest event is the marker's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from contract.events import Event

log = logging.getLogger(__name__)

Part = Literal["default", "nearline", "short_term", "combined"]
PARTS: tuple[Part, ...] = ("default", "nearline", "short_term", "combined")


class Head(Protocol):
    """What serving uses of `encoder.shortterm.ShortTermHead`."""

    out_dim: int
    max_events: int

    def delta(self, nearline: np.ndarray, events: Sequence[Sequence[Event]]) -> np.ndarray: ...

    def scores(self, z: np.ndarray) -> np.ndarray | None:
        """(B, E) combined vectors -> (B, S) the version's served score columns, or None."""
        ...


class HeadSource(Protocol):
    def head(self, version: str) -> Head | None:
        """The version's head; None when the version has none (trained before heads) or
        it could not be loaded (logged)."""
        ...


class RegistryHeads:
    """Heads loaded from a model registry folder (`persona serve`'s models dir), one per
    version, kept for good (a version never changes; at most `keep` versions).

    A version without a head (trained before heads) is served nearline only. So is one this
    replica's registry lacks, or whose head fails to load or its parity check (serving the
    wrong numbers would be worse than serving older ones): logged, and tried again after
    `retry_s` (the files may arrive later)."""

    def __init__(self, models_dir: Path, keep: int = 16, retry_s: float = 60.0) -> None:
        self.models_dir = Path(models_dir)
        self._keep = keep
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._heads: dict[str, tuple[Head | None, float]] = {}  # version -> (head, retry at)

    def head(self, version: str) -> Head | None:
        with self._lock:  # one load per version, also when requests race for it
            got = self._heads.get(version)
            if got is not None and time.monotonic() < got[1]:
                return got[0]
            head, final = self._load(version)
            if version not in self._heads and len(self._heads) >= self._keep:
                self._heads.pop(next(iter(self._heads)))  # the oldest loaded
            retry_at = float("inf") if final else time.monotonic() + self._retry_s
            self._heads[version] = (head, retry_at)
            return head

    def _load(self, version: str) -> tuple[Head | None, bool]:
        """(the head or None, whether that is final for this version)."""
        from encoder.shortterm import ShortTermHead  # numpy only (no torch)

        if not (self.models_dir / version).is_dir():
            log.warning("model %s is not in %s: served nearline only (tried again in %.0f s)",
                        version, self.models_dir, self._retry_s)  # fmt: skip
            return None, False
        try:
            got = ShortTermHead.load(self.models_dir, version)
        except Exception as exc:  # parity failure, unreadable files
            log.error("model %s: short-term head not served (nearline only; tried again in"
                      " %.0f s): %s", version, self._retry_s, exc)  # fmt: skip
            return None, False
        if got is None:
            log.info("model %s has no short-term head: served nearline only", version)
        else:
            log.info("model %s: short-term head loaded (%d events at most)", version,
                     got.max_events)  # fmt: skip
        return got, True


@dataclass(frozen=True, slots=True)
class Folded:
    """The head's part of a response: (N, D) short-term rows (zeros where no event was
    folded), (N,) events folded per row, (N,) ts_ms of the newest folded event (0: none)."""

    short: np.ndarray
    events: np.ndarray
    newest_ms: np.ndarray


def fold(head: Head, nearline: np.ndarray, found: np.ndarray,
         recent: Sequence[Sequence[Event]]) -> Folded:  # fmt: skip
    """The head's output for the `found` rows ((N,) bool) of `nearline` (N, D) with events
    in `recent` (per row, after the marker, oldest first); one `delta` call for all."""
    n = nearline.shape[0]
    counts = np.fromiter(map(len, recent), np.int64, n)
    rows = np.flatnonzero(found & (counts > 0))
    short = np.zeros_like(nearline)
    newest = np.zeros(n, np.int64)
    events = np.zeros(n, np.int32)
    if len(rows):
        take = [recent[i][-head.max_events :] for i in rows.tolist()]
        short[rows] = head.delta(nearline[rows], take)
        events[rows] = [len(t) for t in take]
        newest[rows] = [t[-1].ts_ms for t in take]
    return Folded(short, events, newest)
