"""The lookalike index a replica serves, and the thread that keeps it on the active version.

`ServedIndex` is an index in service with the one model version it holds. `IndexHolder` is
the swap point: `current()` returns the `ServedIndex` (version + index) in
service, replaced atomically. `VersionedFollower` watches the store's active version; when
it changes (and at start) it builds a fresh `PriorIndex` fed by an `IndexFollower` that
reads the update log for that version from the beginning, waits until it has caught up (at
most `catch_up_s`), swaps it in, then stops the previous follower. Until the first swap
FindLookalikes answers FAILED_PRECONDITION, and `persona serve` keeps its health NOT_SERVING
(`IndexHolder.wait_ready`; `--serve-before-index` turns that off).

Shutdown: `stop()` sets a flag and joins; the followers are stopped in `finally`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from services.common.log_limit import LogLimit
from services.index.config import IndexConfig
from services.index.follower import IndexFollower
from services.index.metrics import IndexMetrics
from services.index.prior import PriorIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedIndex:
    """The lookalike index in service and the one model version it holds.

    `lag` (when a follower feeds the index) gives its update-log lag in records, or None
    while unknown.
    """

    version: str
    index: PriorIndex
    lag: Callable[[], int | None] | None = None


class IndexHolder:
    """Also says when the replica is ready for lookalike traffic (`wait_ready`): once an
    index was swapped in, or the follower found no active version to build one for."""

    def __init__(self, served: ServedIndex | None = None) -> None:
        self._served = served
        self._ready = threading.Event()
        if served is not None:
            self._ready.set()

    def current(self) -> ServedIndex | None:
        return self._served

    def swap(self, served: ServedIndex | None) -> ServedIndex | None:
        old, self._served = self._served, served
        if served is not None:
            self._ready.set()
        return old

    def mark_ready(self) -> None:
        """Nothing to wait for (no active version yet): ready without an index."""
        self._ready.set()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)


@dataclass(frozen=True, slots=True)
class FollowConfig:
    """Args:
    bootstrap, topic: the update log (`persona.embeddings`).
    index: how each version's index is built.
    check_s: how often the active version is read.
    catch_up_s: longest wait for a new version's index to catch up before it is swapped in.
    """

    bootstrap: str
    topic: str
    index: IndexConfig
    check_s: float = 5.0
    catch_up_s: float = 300.0


class VersionedFollower:
    def __init__(
        self,
        cfg: FollowConfig,
        holder: IndexHolder,
        active_version: Callable[[], str | None],
        metrics: IndexMetrics | None = None,
    ) -> None:
        self._cfg = cfg
        self._holder = holder
        self._active_version = active_version
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._follower: IndexFollower | None = None
        self._log_limit = LogLimit(10.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="index-versions", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._check()
                except Exception as exc:  # e.g. the store is gone: one line per 10 s
                    if (held := self._log_limit(type(exc).__name__)) is not None:
                        log.exception(
                            "index version check failed; the current index stays%s",
                            LogLimit.more(held),
                        )
                self._stop.wait(self._cfg.check_s)
        finally:
            if self._follower is not None:
                self._follower.stop()

    def _check(self) -> None:
        version = self._active_version()
        served = self._holder.current()
        if version is None:
            self._holder.mark_ready()  # no model yet: no index to wait for
            return
        if served is not None and served.version == version:
            return
        log.info("building the lookalike index for model version %s", version)
        index = PriorIndex(self._cfg.index)
        follower = IndexFollower(
            self._cfg.bootstrap, self._cfg.topic, index, version, metrics=self._metrics
        )
        follower.start()
        try:
            caught_up = follower.catch_up(self._cfg.catch_up_s)
        except BaseException:
            follower.stop()
            raise
        if self._stop.is_set():
            follower.stop()
            return
        if not caught_up:
            log.warning("index for %s did not catch up in %.0f s; serving it anyway",
                        version, self._cfg.catch_up_s)  # fmt: skip
        self._holder.swap(ServedIndex(version, index, follower.lag))
        old, self._follower = self._follower, follower
        if old is not None:
            old.stop()
        log.info("lookalike index now serves %s (%d users)", version, index.size)
