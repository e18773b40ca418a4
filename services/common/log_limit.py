"""Logs of a repeating failure, limited: the first line of a kind goes out, then at most one
every `interval_s`, saying how many were held back (issue #18: an outage wrote a line per
call, or per retry). The counters and metrics still move for every one.

Example::

    limit = LogLimit(10.0)
    held = limit("store unavailable")     # 0: log it; None: hold it back
    if held is not None:
        log.warning("store unavailable: %s%s", exc, LogLimit.more(held))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable


class LogLimit:
    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def __call__(self, key: Hashable) -> int | None:
        """None: hold this line back; else log it, with this many held back since the last."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)

    @staticmethod
    def more(held: int) -> str:
        return f" ({held} more like it since the last line)" if held else ""
