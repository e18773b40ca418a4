"""Which model version a request reads: resolved once per request, cached briefly.

The active pointer and the version states are read from the store at most once every
`ttl_s` (and again at once when a pinned version is not in the cached states, so a version
made a moment ago is not refused). Each response reads all its users under the one version
resolved here, so it never mixes versions.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from contract.versions import is_version
from services.serving.errors import invalid, precondition
from services.serving.ports import VectorReader
from services.serving.store_calls import Budget, StoreCaller


@dataclass(frozen=True, slots=True)
class ScoreColumn:
    """Column j of a version's outcome scores: P(outcome within horizon_ms)."""

    outcome: str
    horizon_ms: int
    calibrated: bool
    audience: bool = True  # kept in the audience sets (GetAudience)


def parse_columns(text: str | None) -> tuple[ScoreColumn, ...]:
    """The store's `p:{models}:scores:<ver>` JSON -> columns (() when absent)."""
    if not text:
        return ()
    return tuple(
        ScoreColumn(
            str(c["outcome"]),
            int(c["horizon_ms"]),
            bool(c["calibrated"]),
            bool(c.get("audience", True)),
        )
        for c in json.loads(text)["columns"]
    )


class VersionResolver:
    def __init__(self, store: VectorReader, caller: StoreCaller, ttl_s: float) -> None:
        self._store = store
        self._caller = caller
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._active: str | None = None
        self._active_at = -float("inf")
        self._states: dict[str, str] = {}
        self._states_at = -float("inf")
        self._columns: dict[str, tuple[tuple[ScoreColumn, ...], float]] = {}

    def active(self, budget: Budget) -> str | None:
        with self._lock:
            if time.monotonic() - self._active_at < self._ttl_s:
                return self._active
        active = self._caller.call(self._store.active_version, budget, "active version")
        with self._lock:
            self._active, self._active_at = active, time.monotonic()
        return active

    def states(self, budget: Budget, fresh: bool = False) -> dict[str, str]:
        with self._lock:
            if not fresh and time.monotonic() - self._states_at < self._ttl_s:
                return self._states
        states = self._caller.call(self._store.versions, budget, "version states")
        with self._lock:
            self._states, self._states_at = dict(states), time.monotonic()
        return states

    def resolve(self, pinned: str, budget: Budget) -> str:
        """`pinned` ("" = the active version) -> the version to read, or ServingError:
        INVALID_ARGUMENT for a malformed or unknown version, FAILED_PRECONDITION for a
        retired one or when no version is active."""
        if not pinned:
            active = self.active(budget)
            if active is None:
                raise precondition("no model version is active yet")
            return active
        state = self.state_of(pinned, budget)
        if state == "retired":
            raise precondition(f"model version {pinned!r} is retired and no longer served")
        return pinned

    def state_of(self, version: str, budget: Budget) -> str:
        """The state of a known version; INVALID_ARGUMENT when malformed or unknown."""
        if not is_version(version):
            raise invalid(f"model_version {version[:80]!r} is not a version id")
        states = self.states(budget)
        if version not in states:
            states = self.states(budget, fresh=True)
        if version not in states:
            known = ", ".join(sorted(states)[-5:]) or "none"
            raise invalid(f"unknown model_version {version!r} (known: {known})")
        return states[version]

    def score_columns(self, version: str, budget: Budget) -> tuple[ScoreColumn, ...]:
        """The version's score columns. A version's columns never change once written, so
        they are kept for good; "none yet" (no refresher has written the version) is asked
        again after `ttl_s`."""
        with self._lock:
            got = self._columns.get(version)
            if got is not None and (got[0] or time.monotonic() - got[1] < self._ttl_s):
                return got[0]
        text = self._caller.call(
            lambda: self._store.score_columns(version), budget, "score columns"
        )
        cols = parse_columns(text)
        with self._lock:
            if len(self._columns) > 256:  # versions come and go; a bound, not an LRU
                self._columns.clear()
            self._columns[version] = (cols, time.monotonic())
        return cols

    def column_of(self, version: str, outcome: str, horizon_ms: int, budget: Budget) -> int:
        """Index of the version's score column (outcome, horizon_ms): FAILED_PRECONDITION
        when the version stores no scores, INVALID_ARGUMENT (listing the known outcomes and
        horizons) when it has no such column."""
        cols = self.score_columns(version, budget)
        if not cols:
            raise precondition(f"model version {version} stores no outcome scores")
        for j, c in enumerate(cols):
            if c.outcome == outcome and c.horizon_ms == horizon_ms:
                return j
        known = sorted({c.outcome for c in cols})
        horizons = sorted({c.horizon_ms for c in cols})
        raise invalid(
            f"no score column ({outcome[:80]!r}, {horizon_ms} ms) in version {version}; "
            f"outcomes: {', '.join(known[:20])}; horizons_ms: {horizons}"
        )
