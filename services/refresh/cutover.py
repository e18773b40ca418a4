"""Model version cutover: request, back-fill, atomic flip, rollback, retire.

`promote(store, models_dir, V)`:
- V active: nothing to do; V "ready" (e.g. the version active before): flip at once;
- otherwise V is marked "backfilling". A running refresher then (a) encodes every dirty user
  with V besides the active version and (b) back-fills V for every user with a window, in
  chunks between its dirty passes, skipping users whose V vector already saw their current
  window. The users come from `Windows.users` (SCAN on Valkey): every user who has a window when
  the back-fill starts is visited; users who appear later are dirty, and the dirty path
  encodes them with every version written, the back-filling one included. When the scan is
  done it flips the active pointer to V in one atomic step (the old version becomes
  "ready", still written, so `rollback` is instant and fresh).

`persona model promote V` (encoder) flips the registry's ACTIVE file; with
`follow_registry` the refresher notices the change (edge-triggered: it remembers the last
registry value it acted on in the store) and calls `promote` itself, so the encoder's
command needs no store access. It may call `promote(...)` directly to start at once, and
`wait_active(...)` to block until the flip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from encoder import registry
from services.refresh.config import RefreshConfig
from services.refresh.metrics import RefreshMetrics, RefreshStats
from services.store.protocols import Vectors, Windows
from services.store.vectors import CutoverError
from services.store.windows import Window

# (windows, version, perf_counter at the read) -> the windows encoded with that version and
# committed, dirty marks left alone: `Refresher.encode_and_commit`
EncodeAndCommit = Callable[[Sequence[Window], str, float], None]

log = logging.getLogger(__name__)


def promote(store: Vectors, models_dir: Path | None, version: str) -> str:
    """Request `version` (checked against the registry when `models_dir` is given).
    Returns its state afterwards: "active" (flipped or already) or "backfilling"."""
    if models_dir is not None:
        registry.resolve(Path(models_dir), version)
    if store.active_version() == version:
        return "active"
    if store.active_version() is None:
        store.set_active(version)  # nothing served yet: nothing to back-fill against
        return "active"
    if store.versions().get(version) == "ready":
        store.set_active(version, require="ready")
        return "active"
    store.set_state(version, "backfilling")
    return "backfilling"


def rollback(store: Vectors) -> tuple[str | None, str]:
    """Flip back to the version active before. Returns (from, to)."""
    return store.rollback()


def retire(store: Vectors, version: str) -> None:
    """Stop writing `version` (not the active one); its vectors age out by TTL."""
    store.set_state(version, "retired")


def status(store: Vectors) -> dict[str, Any]:
    return {
        "active": store.active_version(),
        "versions": store.versions(),
        "history": store.history_versions(),
        "registry_seen": store.registry_seen(),
    }


def wait_active(
    store: Vectors,
    version: str,
    timeout_s: float,
    poll_s: float = 0.5,
    on_poll: Callable[[float, str], None] | None = None,
) -> bool:
    """Block until `version` is active (the back-fill done) or the timeout passes.

    `on_poll(elapsed_s, state)` is called after each look at the store (a progress bar).
    """
    t0 = time.monotonic()
    while store.active_version() != version:
        elapsed = time.monotonic() - t0
        if on_poll is not None:
            on_poll(elapsed, store.versions().get(version, "unknown"))
        if elapsed > timeout_s:
            return False
        time.sleep(poll_s)
    return True


class Cutover:
    """The refresher's side of a cutover: bootstrap, registry following, back-fill steps.

    Args:
        cfg: `follow_registry` and `backfill_batch` are read.
        store, windows: the vector store (pointer, states, heads) and the window store.
        models_dir: the registry whose ACTIVE is followed.
        encode_and_commit: encodes and commits a back-fill chunk.
        stats, metrics: where cutovers and back-filled users are counted.
    """

    def __init__(
        self,
        cfg: RefreshConfig,
        store: Vectors,
        windows: Windows,
        models_dir: Path,
        encode_and_commit: EncodeAndCommit,
        stats: RefreshStats,
        metrics: RefreshMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.windows = windows
        self.models_dir = models_dir
        self.encode_and_commit = encode_and_commit
        self.stats = stats
        self.metrics = metrics
        self._scans: dict[str, Iterator[str]] = {}

    def sync(self) -> None:
        """Bootstrap the pointer from the registry; follow registry changes."""
        models = self.models_dir
        reg = registry.active_version(models)
        if self.store.active_version() is None:
            if reg is None:
                raise CutoverError(f"no active version in the store nor in {models}")
            self.store.set_active(reg)
            self.store.set_registry_seen(reg)
            log.info("active model version initialised from the registry: %s", reg)
        elif self.cfg.follow_registry and reg and reg != self.store.registry_seen():
            state = promote(self.store, models, reg)
            self.store.set_registry_seen(reg)
            log.info("registry ACTIVE changed to %s: %s", reg, state)
        m = self.metrics
        if m is not None:
            active = self.store.active_version()
            for v in self.store.versions():
                m.active_version.labels(version=v).set(1 if v == active else 0)

    def step(self, stop: threading.Event) -> bool:
        """One back-fill chunk of the oldest back-filling version, or its flip when the scan
        is done. Returns False when there is nothing to back-fill."""
        filling = sorted(v for v, s in self.store.versions().items() if s == "backfilling")
        for gone in set(self._scans) - set(filling):
            del self._scans[gone]
        if not filling or stop.is_set():
            return False
        ver = filling[0]
        scan = self._scans.setdefault(ver, self.windows.users())
        chunk = list(dict.fromkeys(islice(scan, self.cfg.backfill_batch)))
        if chunk:
            self._backfill(ver, chunk)
            return True
        del self._scans[ver]
        prev = self.store.set_active(ver, require="backfilling")
        self.stats.cutovers += 1
        if self.metrics is not None:
            self.metrics.cutovers.inc()
        log.info("back-fill of %s complete: active %s -> %s", ver, prev, ver)
        return True

    def _backfill(self, ver: str, users: list[str]) -> None:
        t0 = time.perf_counter()
        wins = self.windows.read(users)
        heads = self.store.get_batch(users, ver)
        todo = [
            w
            for w, h in zip(wins, heads, strict=True)
            if w.events and not (h and h[0].window_version >= w.version)
        ]
        if todo:
            self.encode_and_commit(todo, ver, t0)
        self.stats.backfilled += len(todo)
        if self.metrics is not None:
            self.metrics.backfilled.labels(version=ver).inc(len(todo))
