"""Each model version's short-term head (issue #17), loaded from the model registry once and
kept: serving folds the events after a vector's marker with it (`services/serving/
shortterm.py`), ingest computes each new event's row with it for the short-term state
(`services/ingest/states.py`, LAYOUT.md "Short-term state").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from contract.events import Event

log = logging.getLogger(__name__)


class Head(Protocol):
    """What serving uses of `encoder.shortterm.ShortTermHead`."""

    out_dim: int
    max_events: int

    @property
    def row_dim(self) -> int: ...

    def event_rows(self, events: Sequence[Event]) -> np.ndarray: ...

    def delta_rows(self, z: np.ndarray, u: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...

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
