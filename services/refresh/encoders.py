"""Loaded encoder versions, one per model version the refresher writes, and the encode step
that turns windows into the vectors (and outcome scores) of each."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from encoder.api import Encoder
from services.store.records import StoredVector
from services.store.windows import Window

log = logging.getLogger(__name__)


RETRY_LOAD_S = 60.0  # a version that failed to load is tried again after this long


class Cooldown(dict[str, float]):
    """Keys (versions) whose last try failed, each left alone for `seconds` after its failure;
    a key is in it while it has not succeeded since."""

    def __init__(self, seconds: float = RETRY_LOAD_S) -> None:
        super().__init__()
        self.seconds = seconds

    def waiting(self, key: str) -> bool:
        return time.monotonic() - self.get(key, -math.inf) < self.seconds

    def fail(self, key: str) -> None:
        self[key] = time.monotonic()


class ModelLoadError(RuntimeError):
    """A model version the refresher must write could not be loaded from the registry."""


class EncoderCache:
    """`get(version)` loads a version from the registry once and keeps it; `keep(versions)`
    drops the ones no longer written (a retired version frees its memory). With `compile`,
    a loaded version encodes eagerly at once while it compiles in a thread
    (`Encoder.compile_in_background`); with `streams` > 1 each runs that many CPU passes at
    once (`encoder/streams.py`). `close` waits for the compile threads and stops the stream
    threads (a later `get` and encode start them again); a dropped version's stream threads
    stop at the `keep` that drops it (or, while it compiles, at a later one)."""

    def __init__(
        self,
        models_dir: Path,
        device: str | None = None,
        compile: bool = False,
        bf16: bool = False,
        streams: int = 1,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.device = device
        self.compile = compile  # compile each loaded version's layers (CPU; encoder/compiled.py)
        self.bf16 = bf16  # bf16 autocast on a CPU with native bf16 (encoder/api.py)
        self.streams = streams  # CPU passes at once (encoder/streams.py)
        self._loaded: dict[str, Encoder] = {}
        self._all: list[Encoder] = []  # the loaded ones and dropped ones still compiling
        self.failed = Cooldown()  # versions whose loading failed, and when

    def get(self, version: str) -> Encoder:
        enc = self._loaded.get(version)
        if enc is None:
            try:
                enc = Encoder.load(self.models_dir, version, self.device, bf16=self.bf16,
                                   streams=self.streams)  # fmt: skip
            except Exception as exc:
                raise ModelLoadError(f"model {version} from {self.models_dir}: {exc}") from exc
            log.info("loaded model %s on %s (dim %d, %s%s)", version, enc.device, enc.dim,
                     "bf16" if enc.bf16 else "float32",
                     ", compiling its layers" if self.compile else "")  # fmt: skip
            if self.compile:
                enc.compile_in_background()
            self._loaded[version] = enc
            self._all.append(enc)
        return enc

    def loads(self, version: str, on_failure: Callable[[], None] = lambda: None) -> bool:
        """Whether `version` loads. One that does not (its files corrupt, changed or gone)
        is logged, `on_failure` called, and not tried again for `RETRY_LOAD_S`: a back-filling
        or ready version must not stop the active version's refresh (it raised on every
        loop, and nothing was written)."""
        if self.failed.waiting(version):
            return False
        try:
            self.get(version)
        except ModelLoadError as exc:
            self.failed.fail(version)
            on_failure()
            log.error("%s; %s is left alone until it loads (tried each minute)", exc, version)
            return False
        self.failed.pop(version, None)
        return True

    def reads(self, versions: Sequence[str]) -> int:
        """How many of a window's newest events the versions' encoders read (the most of
        them): all a refresh or back-fill needs to read of a window."""
        return max(self.get(v).max_events for v in versions)

    def wait_compiled(self, timeout: float | None = None) -> None:
        """Wait for every loaded version's background compile (tests, benchmarks, close)."""
        for enc in self._all:
            enc.wait_compiled(timeout)

    def close(self) -> None:
        """Wait for the compile threads (a compiler child process is never left behind) and
        stop the stream threads (an encoder used again starts them again)."""
        for enc in self._all:
            enc.close()

    def put(self, enc: Encoder) -> None:
        """Use an already built encoder for its version (tests, benchmarks)."""
        self._loaded[enc.version] = enc

    def keep(self, versions: set[str]) -> None:
        for v in set(self._loaded) - versions:
            del self._loaded[v]
        live = []
        for e in self._all:
            if e.version in self._loaded or e.compiling:
                live.append(e)
            else:
                e.close()  # a dropped version: its stream threads stop
        self._all = live


def encode_windows(
    encoders: EncoderCache, windows: Sequence[Window], versions: Sequence[str], at_ms: int
) -> dict[str, list[StoredVector | None]]:
    """Per version, one StoredVector per window (None for an empty window), with the
    calibrated outcome scores when the version has outcome heads and the marker of the
    window's newest event (layout 3: the short-term head folds only the events after it)."""
    out: dict[str, list[StoredVector | None]] = {}
    full = [i for i, w in enumerate(windows) if w.events]
    for ver in versions:
        enc = encoders.get(ver)
        rows: list[StoredVector | None] = [None] * len(windows)
        if full:
            vecs = enc.encode([windows[i].events for i in full], at_ms)  # (B, dim)
            scores = None if enc.outcomes is None else enc.outcomes.scores(vecs)  # (B, S)
            for j, i in enumerate(full):
                w = windows[i]
                n = min(len(w.events), enc.max_events)
                sc = None if scores is None else scores[j]
                last = w.events[-1]  # the newest in window order: the vector's marker
                rows[i] = StoredVector(w.user_id, ver, vecs[j], at_ms, n, w.version, sc,
                                       (last.ts_ms, last.event_id))  # fmt: skip
        out[ver] = rows
    return out
