"""Store calls bounded by the caller's deadline.

A `Budget` is made once per request from the time the client has left; every store call of
that request runs in a worker thread and is waited for at most the budget's remaining time,
so a slow or silent store gives DEADLINE_EXCEEDED (the client's deadline was the limit) or
UNAVAILABLE (the server's own `store_timeout_s` was), never a hang. The worker thread itself
is freed by the client's socket timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar

import grpc
import redis

from services.serving.errors import ServingError

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

    def call(self, fn: Callable[[], T], budget: Budget, what: str) -> T:
        left = budget.remaining()
        if left <= 0:
            raise self._timeout(budget, what, 0.0)
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=left)
        except FutureTimeout:
            future.cancel()
            raise self._timeout(budget, what, left) from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._on_error("unavailable")
            log.warning("store unavailable during %s: %s", what, exc)
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"store unavailable ({what})") from None
        except redis.RedisError as exc:
            self._on_error("error")
            log.warning("store error during %s: %s", what, exc)
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"store error ({what})") from None
        except ValueError as exc:  # an unreadable record (layout, length)
            self._on_error("error")
            log.error("bad record from the store during %s: %s", what, exc)
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
