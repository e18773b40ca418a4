"""The Persona service's readiness: SERVING only while the replica can answer.

Two conditions, each kept by its own thread, combined in `Readiness.update`:

1. The index (optional): `ServingServer.start(ready=...)` waits for it once at start.
2. The store: `StoreWatch` probes it every `probe_s` (the active-version read every call
   makes). After `failures` failed probes in a row the store counts as unreachable and
   readiness goes NOT_SERVING; one good probe brings it back (issue #18: health stayed
   SERVING while every GetEmbeddings failed). The transitions are logged once each, not
   every probe: a store that stays away gives two lines, not one a second.

Liveness (the server as a whole, service "") stays SERVING throughout: the process is
healthy and must not be restarted for an outage of its store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    """Sets `service`'s health from its conditions; nothing after `stop()`."""

    def __init__(self, servicer: health.HealthServicer, service: str) -> None:
        self._health = servicer
        self._service = service
        self._lock = threading.Lock()
        self.index_ready = False
        self.store_ok = True
        self._stopped = False

    def update(self, *, index_ready: bool | None = None, store_ok: bool | None = None) -> None:
        with self._lock:
            if self._stopped:
                return
            if index_ready is not None:
                self.index_ready = index_ready
            if store_ok is not None:
                self.store_ok = store_ok
            ok = self.index_ready and self.store_ok
            self._health.set("", SERVING)
            self._health.set(self._service, SERVING if ok else NOT_SERVING)

    def stop(self) -> None:
        """From now on health is the graceful shutdown's (NOT_SERVING), whatever happens."""
        with self._lock:
            self._stopped = True


class StoreWatch:
    """Probes the store on a thread (`probe` raises when it cannot be reached) and tells
    `on_change(ok)` when reachability changes, after `failures` failures in a row or one
    success."""

    def __init__(
        self,
        probe: Callable[[], object],
        on_change: Callable[[bool], None],
        probe_s: float,
        failures: int,
        on_probe: Callable[[bool], None] | None = None,
    ) -> None:
        self._probe = probe
        self._on_change = on_change
        self._on_probe = on_probe
        self._probe_s = probe_s
        self._failures = max(1, failures)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-watch", daemon=True)
        self.ok = True
        self.probes = 0  # made so far

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._probe_s + 5)

    def _run(self) -> None:
        failed = 0
        while not self._stop.wait(self._probe_s):
            self.probes += 1
            try:
                self._probe()
            except Exception as exc:  # any failure to answer is "unreachable"
                failed += 1
                if self._on_probe is not None:
                    self._on_probe(False)
                if self.ok and failed >= self._failures:
                    self.ok = False
                    log.warning(
                        "store unreachable (%d probes failed, last: %s: %.200s): readiness"
                        " NOT_SERVING until it answers again",
                        failed, type(exc).__name__, exc,
                    )  # fmt: skip
                    self._on_change(False)
                continue
            if self._on_probe is not None:
                self._on_probe(True)
            if not self.ok:
                log.warning("store reachable again after %d failed probes: readiness back", failed)
                self.ok = True
                self._on_change(True)
            failed = 0
