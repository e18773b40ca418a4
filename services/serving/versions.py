"""Which model version a request reads: resolved once per request, cached briefly.

The active pointer and the version states are read from the store at most once every
`ttl_s` (and again at once when a pinned version is not in the cached states, so a version
made a moment ago is not refused). Each response reads all its users under the one version
resolved here, so it never mixes versions.
"""

from __future__ import annotations

import threading
import time

from contract.versions import is_version
from services.serving.errors import invalid, precondition
from services.serving.ports import VectorReader
from services.serving.store_calls import Budget, StoreCaller


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
