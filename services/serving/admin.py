"""The AdminService servicer (operator calls beside the serving API): ForgetUsers.

Thin, as the serving servicer: ids checked, then `services.refresh.forget.forget_users` (the
store, then the update log's tombstones), errors mapped to status codes. The update-log
producer is made on the first call (a server that never forgets anyone never connects to
the broker for it) and closed by `close`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc
from confluent_kafka import KafkaException
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc as pb_grpc
from redis.exceptions import RedisClusterException, RedisError

from contract.record import MAX_ID_BYTES
from services.refresh.forget import forget_users
from services.refresh.publish import Publisher
from services.store.protocols import Forgetter

log = logging.getLogger(__name__)


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Args:
    forgetter: the store's (`services.store.forget.StoreForgetter`); stays the caller's.
    publisher: makes the update-log publisher, once, on the first ForgetUsers.
    max_users: most ids a request may carry (the serving `max_batch`).
    max_id_bytes: longest id (UTF-8 bytes; the serving `max_id_bytes`): a longer one could
        be forgotten in the store while its tombstone is too large for the update log.
    clock_ms: the request's time (ms since the epoch); injectable for tests.
    """

    def __init__(
        self,
        forgetter: Forgetter,
        publisher: Callable[[], Publisher],
        max_users: int,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        max_id_bytes: int = MAX_ID_BYTES,
    ) -> None:
        self._forgetter = forgetter
        self._make_publisher = publisher
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()  # one forget at a time: they are rare, the producer one
        self._max = max_users
        self._clock_ms = clock_ms
        self._max_id_bytes = max_id_bytes

    def ForgetUsers(
        self, request: pb.ForgetUsersRequest, context: grpc.ServicerContext
    ) -> pb.ForgetUsersResponse:
        ids = list(request.user_ids)
        if not 1 <= len(ids) <= self._max or not all(ids) or any("\x00" in u for u in ids):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"user_ids: 1..{self._max} non-empty ids without NUL, got {len(ids)}",
            )
        longest = max(len(u.encode("utf-8")) for u in ids)
        if longest > self._max_id_bytes:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"user_ids: an id of {longest} bytes; at most {self._max_id_bytes}",
            )
        at = self._clock_ms()
        try:
            with self._lock:
                if self._publisher is None:
                    self._publisher = self._make_publisher()
                res = forget_users(self._forgetter, self._publisher, ids, at)
        except (RedisError, RedisClusterException, KafkaException) as exc:
            # RedisClusterException: a slot no node serves (not a RedisError)
            log.warning("ForgetUsers failed (the caller retries): %s", exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"store or broker: {exc!s:.200}")
        except Exception:  # INTERNAL without details, as the serving methods answer
            log.exception("ForgetUsers failed")
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        return pb.ForgetUsersResponse(
            forgotten=len(res.users),
            windows=res.windows,
            vector_lists=res.vectors,
            tombstones=len(res.users) * len(res.versions),
            forgotten_at_ms=at,
        )

    def close(self) -> None:
        with self._lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None
