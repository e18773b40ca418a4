"""The served log: a sample of GetEmbeddings answers written to a Kafka topic (default
`persona.served`, `contract.topics.SERVED`), so outcomes (clicks, purchases) can later be
joined to the vector that was served. Never on the request's path. In order:

1. `offer(user_ids, result)`, on the handler thread after the answer is built: each answered
   row is kept with probability `rate` (one draw per row); the kept rows go onto a bounded
   in-memory queue as one item with `put_nowait`. A full queue drops the item and counts its
   rows (`persona_serving_served_log_records_total{outcome="dropped"}`): the call never waits.
2. A background thread opens the producer (`open_producer`: `persona serve` creates the topic
   there and returns `services.common.kafka.producer`; retried every `RETRY_S` while it
   fails, the queue dropping meanwhile), takes what is queued, sends one record per row
   (key = user id) and flushes: acknowledged rows count as `sent`, the rows of a batch whose
   flush failed as `failed`.
3. `close()` (`ServingServer.stop`, after the gRPC server stopped): the thread sends what is
   still queued, flushes, closes the producer and exits; `close` joins it.

The record, one JSON object (UTF-8) per sampled answer, schema version `v` 1; readers ignore
fields they do not know (scores, when there are some, will be new fields)::

    {"v": 1, "user_id": "u1", "model_version": "v3", "status": "found", "found": true,
     "computed_at_ms": 1764650000000, "served_at_ms": 1764650001234, "request_id": "9f1c..."}

`status` is found, not_found or fallback (the population prior was served); `computed_at_ms`
is when the served vector was computed (null unless found); `served_at_ms` the server's wall
clock when it answered; `request_id` the call's (`x-request-id`, returned to the caller), null
outside a call. With `history_depth`, only the newest vector's metadata is logged.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from confluent_kafka import KafkaException

from services.common.log_limit import LogLimit
from services.serving.config import ServedLogConfig
from services.serving.embeddings import FOUND, STATUSES, EmbeddingsResult
from services.serving.metrics import ServingMetrics
from services.telemetry import REQUEST_ID

log = logging.getLogger(__name__)
SCHEMA = 1


class Producer(Protocol):
    """What the served log uses of `services.common.kafka.AckedProducer`."""

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> None: ...

    def flush(self, timeout_s: float | None = None) -> None: ...

    def close(self, timeout_s: float = 30.0) -> None: ...


RETRY_S = 5.0  # between attempts to open the producer
BATCH_ITEMS = 512  # queue items sent between two flushes
FLUSH_S = 10.0  # longest wait for the acks of one batch


@dataclass(frozen=True, slots=True)
class Sample:
    """The sampled rows of one call (one queue item)."""

    served_at_ms: int
    request_id: str | None
    version: str
    user_ids: list[str]
    status: np.ndarray  # (n,) uint8 codes into STATUSES
    computed_at_ms: np.ndarray  # (n,) int64

    def records(self) -> list[tuple[bytes, bytes]]:
        """(key, value) per row."""
        out = []
        for uid, code, at in zip(
            self.user_ids, self.status.tolist(), self.computed_at_ms.tolist(), strict=True
        ):
            found = code == FOUND
            value = {
                "v": SCHEMA,
                "user_id": uid,
                "model_version": self.version,
                "status": STATUSES[code],
                "found": found,
                "computed_at_ms": at if found else None,
                "served_at_ms": self.served_at_ms,
                "request_id": self.request_id,
            }
            out.append((uid.encode(), json.dumps(value, ensure_ascii=False).encode()))
        return out


class ServedLog:
    def __init__(
        self,
        config: ServedLogConfig,
        open_producer: Callable[[], Producer],
        metrics: ServingMetrics,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self._open = open_producer
        self._queue: queue.Queue[Sample] = queue.Queue(config.queue)
        self._rng = np.random.default_rng(seed)  # its bit generator locks: thread-safe
        self._sent = metrics.served_log.labels("sent")
        self._dropped = metrics.served_log.labels("dropped")
        self._failed = metrics.served_log.labels("failed")
        self._stop = threading.Event()
        self._log_limit = LogLimit(30.0)
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, user_ids: Sequence[str], r: EmbeddingsResult) -> None:
        """Sample the answer `r` to `user_ids` (row i answers user_ids[i]) and queue it;
        never blocks."""
        n = len(r.status)
        if self.config.rate <= 0 or n == 0 or self._stop.is_set():
            return
        rows = np.arange(n) if self.config.rate >= 1 else np.flatnonzero(
            self._rng.random(n) < self.config.rate
        )  # fmt: skip
        if rows.size == 0:
            return
        s = Sample(
            int(time.time() * 1000),
            REQUEST_ID.get(),
            r.version,
            [user_ids[i] for i in rows.tolist()],
            r.status[rows],
            r.stored.computed_at_ms[rows, 0],
        )
        try:
            self._queue.put_nowait(s)
        except queue.Full:
            self._dropped.inc(rows.size)

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what is queued, flush, stop the thread (joined within `timeout_s`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("served log: the producer thread did not stop in %.0f s", timeout_s)

    def _run(self) -> None:
        producer = None
        while producer is None:
            try:
                producer = self._open()
            except Exception as exc:
                self._warn("open", "served log: no producer (%s); retrying in %.0f s", exc, RETRY_S)
                if self._stop.wait(RETRY_S):
                    self._drop_queued()
                    return
        try:
            while not (self._stop.is_set() and self._queue.empty()):
                batch = self._take()
                if batch:
                    self._send(producer, batch)
        finally:
            producer.close(FLUSH_S)

    def _take(self) -> list[Sample]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < BATCH_ITEMS:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _send(self, producer: Producer, batch: list[Sample]) -> None:
        rows = 0
        try:
            for s in batch:
                for key, value in s.records():
                    producer.send(self.config.topic, value, key)
                    rows += 1
            producer.flush(FLUSH_S)
        except KafkaException as exc:
            self._failed.inc(sum(len(s.user_ids) for s in batch))
            self._warn("send", "served log: %d answers not acknowledged: %s", rows, exc)
            return
        self._sent.inc(rows)

    def _drop_queued(self) -> None:
        while True:
            try:
                self._dropped.inc(len(self._queue.get_nowait().user_ids))
            except queue.Empty:
                return

    def _warn(self, kind: str, msg: str, *args: object) -> None:
        if (held := self._log_limit(kind)) is not None:
            log.warning(msg + "%s", *args, LogLimit.more(held))
