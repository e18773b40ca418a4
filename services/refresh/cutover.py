"""Model version cutover: request, back-fill, atomic flip, rollback, retire.

`promote(store, models_dir, V)`:
- V active: nothing to do; V "ready" (e.g. the version active before): flip at once;
- otherwise V is marked "backfilling". A running refresher then (a) encodes every dirty user
  with V besides the active version and (b) back-fills V for every user with a window, in
  chunks between its dirty passes, skipping users whose V vector already saw their current
  window. The users come from `Windows.users` (SCAN on Valkey): every user who has a window when
  the back-fill starts is visited; users who appear later are dirty, and the dirty path
  encodes them with every version written, the back-filling one included.
  The back-fill goes by bucket range: a refresher scans each range its share holds
  (`share.py`; alone: one range, every bucket) and, when a range's scan is done, records its
  buckets as back-filled in the store (`Vectors.mark_backfilled`). Whichever refresher then
  finds all 1024 buckets recorded flips the active pointer to V in one atomic step (the old
  version becomes "ready", still written, so `rollback` is instant and fresh). Completion is
  read from the store, so a refresher that dies mid-range loses nothing: the member that
  gets its range scans it again, and skips the users already done without encoding them.

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
from encoder.registry import RegistryError
from services.refresh.config import RefreshConfig
from services.refresh.encoders import Cooldown
from services.refresh.metrics import RefreshMetrics, RefreshStats
from services.refresh.share import AllBuckets
from services.store import layout
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
    if models_dir is not None:  # the manifest too: a corrupt version is never requested
        registry.open_version(Path(models_dir), version)
    if store.active_version() == version:
        return "active"
    if store.active_version() is None:
        store.set_active(version)  # nothing served yet: nothing to back-fill against
        return "active"
    state = store.versions().get(version)
    if state == "ready":
        store.set_active(version, require="ready")
        return "active"
    if state != "backfilling":
        store.reset_backfill(version)  # progress of an earlier, abandoned back-fill
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
        "backfilled_buckets": {
            v: len(store.backfilled(v)) for v, s in store.versions().items() if s == "backfilling"
        },
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
        share: which bucket ranges this refresher back-fills (None: all, one range).
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
        share: AllBuckets | None = None,
        reads: Callable[[str], int | None] = lambda version: None,
        loads: Callable[[str], bool] = lambda version: True,
    ) -> None:
        """`reads(version)`: the newest events of a window the version's encoder reads (the
        back-fill reads no more of the window; None: all of it). `loads(version)`: whether
        its encoder loads (`EncoderCache.loads`); a back-filling version that does not is
        left alone (counted and logged there) while the loop's other work goes on."""
        self.cfg = cfg
        self.store = store
        self.windows = windows
        self.models_dir = models_dir
        self.encode_and_commit = encode_and_commit
        self.stats = stats
        self.metrics = metrics
        self.share = share or AllBuckets()
        self.reads = reads
        self.loads = loads
        self._scans: dict[tuple[str, range], Iterator[str]] = {}  # (version, range): its SCAN
        self._follow_failed = Cooldown()  # registry ACTIVEs that could not be followed

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
            self._follow(reg)
        m = self.metrics
        if m is not None:
            active = self.store.active_version()
            for v in self.store.versions():
                m.active_version.labels(version=v).set(1 if v == active else 0)

    def _follow(self, reg: str) -> None:
        """Request the registry's new ACTIVE. A version the registry cannot open (missing,
        its files changed) is counted and logged, and tried again after a minute; the
        refresh of the active version goes on meanwhile (raising here stopped it)."""
        if self._follow_failed.waiting(reg):
            return
        try:
            state = promote(self.store, self.models_dir, reg)
        except RegistryError as exc:
            self._follow_failed.fail(reg)
            self.stats.error(self.metrics, "model")
            log.error("registry ACTIVE is %s, which cannot be followed: %s", reg, exc)
            return
        self._follow_failed.pop(reg, None)
        self.store.set_registry_seen(reg)
        log.info("registry ACTIVE changed to %s: %s", reg, state)

    def step(self, stop: threading.Event) -> bool:
        """One back-fill chunk of the oldest back-filling version in a range of this share
        that the store does not record as done; else, when a range's scan ends, record it;
        else, when the store records every bucket, the flip. Returns False when none of
        that was to do (nothing back-filling, or this share's ranges all done)."""
        states = self.store.versions().items()
        filling = sorted(v for v, s in states if s == "backfilling" and self.loads(v))
        ranges = self.share.ranges()
        for key in [k for k in self._scans if k[0] not in filling or k[1] not in ranges]:
            del self._scans[key]  # the version flipped or stopped, or the range moved away
        if not filling or stop.is_set():
            return False
        ver = filling[0]
        done = self.store.backfilled(ver)
        for r in ranges:
            if done.issuperset(r):
                continue
            scan = self._scans.setdefault((ver, r), self._range_users(r))
            chunk = list(dict.fromkeys(islice(scan, self.cfg.backfill_batch)))
            if chunk:
                if not self._backfill(ver, chunk):  # the range moved away meanwhile: this
                    del self._scans[(ver, r)]  # scan skipped users, it cannot finish it
                return True
            del self._scans[(ver, r)]
            if r in self.share.ranges():  # ours for the whole scan: every user visited
                self.store.mark_backfilled(ver, r)
                done |= set(r)
            break
        if len(done) < layout.BUCKETS:
            return bool(ranges) and not done.issuperset(b for r in ranges for b in r)
        prev = self.store.set_active(ver, require="backfilling")
        self.store.reset_backfill(ver)
        if prev != ver:  # another refresher of the group may have flipped it first
            self.stats.cutovers += 1
            if self.metrics is not None:
                self.metrics.cutovers.inc()
            log.info("back-fill of %s complete: active %s -> %s", ver, prev, ver)
        return True

    def _range_users(self, r: range) -> Iterator[str]:
        if r == range(layout.BUCKETS):
            return self.windows.users()
        return (u for u in self.windows.users() if layout.bucket(u) in r)

    def _backfill(self, ver: str, users: list[str]) -> bool:
        """Back-fill the users still in this share; False if some were not."""
        keep = self.share.claim(users)  # the range may have moved since the chunk was cut
        try:
            if keep:
                self._backfill_claimed(ver, [users[i] for i in keep])
        finally:
            if keep:
                self.share.release()
        return len(keep) == len(users)

    def _backfill_claimed(self, ver: str, users: list[str]) -> None:
        t0 = time.perf_counter()
        wins = self.windows.read(users, self.reads(ver))
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
