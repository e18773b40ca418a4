"""Shared pieces of the fault scenarios: a background ingester, waits, window comparison."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from contract.events import Event
from services.config import KafkaConfig, WindowConfig
from services.ingest.consumer import Ingestor
from services.ingest.metrics import ingest_metrics
from services.store.client import Client, connect
from services.store.reference import ReferenceWindows
from services.store.windows import WindowStore

# `persona ...` as a child process, run by this interpreter
PERSONA = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]


@dataclass
class BackgroundIngest:
    """One `Ingestor` in a thread, stopped (and its client closed) by `stop()`."""

    kcfg: KafkaConfig
    redis_url: str
    wcfg: WindowConfig
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.client: Client = connect(self.redis_url)
        self.ingestor = Ingestor(
            self.kcfg, self.wcfg, WindowStore(self.client, self.wcfg), ingest_metrics(self.registry)
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.ingestor.run(self._stop, poll_ms=200)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> BackgroundIngest:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.client.close()
        assert not self._thread.is_alive(), "the ingester did not stop"
        if self.error is not None:
            raise self.error

    def counter(self, name: str) -> float:
        return self.registry.get_sample_value(f"persona_ingest_events_{name}_total") or 0.0


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `cond` until true; returns the seconds it took. Fails the test on timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


def compare(
    store: WindowStore, ref: ReferenceWindows, users: list[str] | None = None
) -> tuple[int, int]:
    """(events missing from the store, events in the store that the truth lacks)."""
    uids = sorted(ref.users) if users is None else users
    lost = extra = 0
    for uid, w in zip(uids, store.read(uids), strict=True):
        want = {_key(e) for e in ref.window(uid)}
        got = {_key(e) for e in w.events}
        lost += len(want - got)
        extra += len(got - want)
    return lost, extra


def _key(e: Event) -> str:
    return json.dumps(e.to_json_dict(), sort_keys=True)
