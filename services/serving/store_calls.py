"""Store calls bounded by the caller's deadline.

A `Budget` is made once per request from the time the client has left. A store call runs
either in a worker thread and is waited for at most the budget's remaining time (`call`:
for any function; the worker thread itself is freed by the client's socket timeout), or on
the calling thread with the budget's end as its deadline (`call_inline`: for reads that
bound every socket wait by it, `VectorStore.read_batch`; no thread hand-off). Either way a
slow or silent store gives DEADLINE_EXCEEDED (the client's deadline was the limit) or
UNAVAILABLE (the server's own `store_timeout_s` was), never a hang.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc
import redis
from redis.exceptions import RedisClusterException

from services.common.log_limit import LogLimit
from services.serving.errors import ServingError
from services.store.router import DeadlineReached

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Budget:
    """Until when store calls of one request may run (monotonic clock), and whether that
    limit is the client's deadline (True) or the server's store timeout (False)."""

    until: float
    client_bound: bool

    @staticmethod
    def make(time_remaining_s: float | None, store_timeout_s: float, margin_s: float) -> Budget:
        """`time_remaining_s`: what `context.time_remaining()` says (None or huge: no deadline)."""
        now = time.monotonic()
        if time_remaining_s is None or time_remaining_s - margin_s >= store_timeout_s:
            return Budget(now + store_timeout_s, False)
        return Budget(now + max(0.0, time_remaining_s - margin_s), True)

    def remaining(self) -> float:
        return self.until - time.monotonic()


class StoreCaller:
    """Runs store calls on its own threads, bounded by a Budget; maps store failures to
    status codes and counts them with `on_error(kind)` (kind: timeout | unavailable | error).
    """

    def __init__(self, workers: int, on_error: Callable[[str], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store-call")
        self._on_error = on_error or (lambda kind: None)
        self._log_limit = LogLimit(10.0)  # an outage: one line per kind and call site / 10 s

    def call(self, fn: Callable[[], T], budget: Budget, what: str) -> T:
        """`fn()` on a worker thread, waited for until the budget ends."""
        left = budget.remaining()
        if left <= 0:
            raise self._timeout(budget, what, 0.0)
        future = self._pool.submit(fn)
        with self._mapped(what):
            try:
                return future.result(timeout=left)
            except FutureTimeout:
                future.cancel()
                raise self._timeout(budget, what, left) from None
        raise AssertionError("unreachable")  # pragma: no cover (for mypy)

    def call_inline(self, fn: Callable[[float], T], budget: Budget, what: str) -> T:
        """`fn(deadline)` on this thread; `fn` must return or raise `DeadlineReached` by
        `deadline` (time.monotonic())."""
        left = budget.remaining()
        if left <= 0:
            raise self._timeout(budget, what, 0.0)
        with self._mapped(what):
            try:
                return fn(budget.until)
            except DeadlineReached:
                raise self._timeout(budget, what, left) from None
        raise AssertionError("unreachable")  # pragma: no cover (for mypy)

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Store failures -> ServingError (UNAVAILABLE, or INTERNAL for a bad record). A
        cluster slot that no node serves (RedisClusterException) is UNAVAILABLE too."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, OSError, RedisClusterException) as exc:
            self._on_error("unavailable")
            if (held := self._log_limit(("unavailable", what))) is not None:
                log.warning("store unavailable during %s: %s%s", what, exc, LogLimit.more(held))
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"store unavailable ({what})") from None
        except redis.RedisError as exc:
            self._on_error("error")
            if (held := self._log_limit(("error", what))) is not None:
                log.warning("store error during %s: %s%s", what, exc, LogLimit.more(held))
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"store error ({what})") from None
        except ValueError as exc:  # an unreadable record (layout, length)
            self._on_error("error")
            if (held := self._log_limit(("record", what))) is not None:
                log.error(
                    "bad record from the store during %s: %s%s", what, exc, LogLimit.more(held)
                )
            raise ServingError(
                grpc.StatusCode.INTERNAL, f"the store returned an unreadable record ({what})"
            ) from None

    def _timeout(self, budget: Budget, what: str, waited: float) -> ServingError:
        self._on_error("timeout")
        if budget.client_bound:
            return ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline exceeded waiting {waited * 1000:.0f} ms for the store ({what})",
            )
        return ServingError(
            grpc.StatusCode.UNAVAILABLE,
            f"store did not answer within {waited * 1000:.0f} ms ({what})",
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
