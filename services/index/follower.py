"""IndexFollower: keeps a LookalikeIndex current from the compacted update log.

It reads `persona.embeddings` with librdkafka (confluent-kafka), no consumer group: every
partition is assigned and read from the beginning, so a new replica rebuilds its whole
index from the log (compaction keeps the last value per user), and replicas never share
or commit offsets.

Two threads, both started by `start()` and joined by `stop()`:
- the reader polls, folds each poll into the last value per user (`updates.decode_batch`)
  and applies it; it refreshes the end offsets about once a second for `lag()`;
- the maintainer rebuilds the index when it `needs_rebuild()` (kind or size changed a lot)
  or, if anything changed, every `rebuild_interval_s`. Rebuilds swap in atomically and do
  not stop the reader.

Shutdown: `stop()` only sets a flag and joins; the reader leaves its loop and closes the
consumer in `finally`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from services.common.kafka import RDKAFKA_LOG, consume_ready, rdkafka_config
from services.index.ann import LookalikeIndex
from services.index.metrics import IndexMetrics
from services.index.updates import Batch, decode_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FollowerConfig:
    """Args:
    rebuild_interval_s: scheduled rebuild period (skipped when nothing changed).
    maintenance_check_s: how often the maintainer asks `needs_rebuild()`.
    poll_timeout_ms, max_poll_records: one consumer poll.
    end_offsets_every_s: how often the reader refreshes the end offsets behind `lag()`.
    assign_timeout_s: how long to wait for the topic's partitions at start.
    """

    rebuild_interval_s: float = 600.0
    maintenance_check_s: float = 1.0
    poll_timeout_ms: int = 200
    max_poll_records: int = 5000
    end_offsets_every_s: float = 1.0
    assign_timeout_s: float = 30.0


class IndexFollower:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        index: LookalikeIndex,
        model_version: str | None,
        config: FollowerConfig | None = None,
        metrics: IndexMetrics | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.index = index
        self.model_version = model_version
        self.config = config or FollowerConfig()
        self.metrics = metrics
        self.failure: BaseException | None = None
        self._consumer: Any | None = None  # a librdkafka Consumer; one thread at a time
        self._tps: list[TopicPartition] = []
        self._lows: dict[int, int] = {}  # low watermarks, for partitions nothing was read from
        self._drive = threading.Lock()  # held by whoever polls the consumer
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()  # guards the offsets below, signals progress
        self._positions: dict[int, int] = {}
        self._ends: dict[int, int] | None = None
        self._ends_at = 0.0
        self._ends_wanted = 0  # bumped by catch_up callers; the reader answers with _ends_seq
        self._ends_seq = 0

    # ----- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("follower already started")
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._read_loop, name="index-follower", daemon=True),
            threading.Thread(target=self._maintain_loop, name="index-maintainer", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Sets the stop flag, joins both threads, and closes the consumer."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout_s)
            if t.is_alive():
                log.warning("%s did not stop within %.0f s", t.name, timeout_s)
        self._threads = []
        with self._drive:
            self._close()

    def __enter__(self) -> IndexFollower:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the reader thread runs."""
        return bool(self._threads) and self._threads[0].is_alive()

    # ----- progress ----------------------------------------------------------------------

    def lag(self) -> int | None:
        """Records between the applied positions and the last end offsets seen (refreshed
        about once a second); None until the end offsets were read once."""
        with self._cond:
            return self._lag_locked()

    def caught_up(self) -> bool:
        return self.lag() == 0

    def catch_up(self, timeout_s: float) -> bool:
        """Blocks until the index holds everything up to the end offsets at call time.

        Works whether or not the threads run (without them it polls in this thread, then
        rebuilds the index if it `needs_rebuild()`).
        Returns False on timeout, on stop, or if the reader failed.
        """
        deadline = time.monotonic() + timeout_s
        if not self.running:
            with self._drive:
                self._open(deadline)
                self._step()  # one fetch first, so the high watermark is known (see _fetch_ends)
                target = self._fetch_ends(ask_broker=True)
                while not self._reached(target):
                    if time.monotonic() > deadline or self._stop.is_set():
                        return False
                    self._step()
            if self.index.needs_rebuild():  # no maintainer thread runs: rebuild here
                self._rebuild()
            return True
        with self._cond:
            self._ends_wanted += 1
            want = self._ends_wanted
            if not self._cond.wait_for(
                lambda: self._ends_seq >= want or not self.running,
                max(0.0, deadline - time.monotonic()),
            ):
                return False
            target = dict(self._ends or {})
            return self._cond.wait_for(
                lambda: self._reached_locked(target) or not self.running,
                max(0.0, deadline - time.monotonic()),
            ) and self._reached_locked(target)

    def _lag_locked(self) -> int | None:
        if self._ends is None:
            return None
        return sum(max(0, end - self._positions.get(p, 0)) for p, end in self._ends.items())

    def _reached(self, target: dict[int, int]) -> bool:
        with self._cond:
            return self._reached_locked(target)

    def _reached_locked(self, target: dict[int, int]) -> bool:
        return all(self._positions.get(p, 0) >= end for p, end in target.items())

    # ----- reader ------------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            with self._drive:
                self._open(time.monotonic() + self.config.assign_timeout_s)
                while not self._stop.is_set():
                    self._step()
        except BaseException as exc:
            self.failure = exc
            log.exception("index follower stopped on an error")
        finally:
            with self._cond:
                self._cond.notify_all()

    def _open(self, deadline: float) -> None:
        """Creates the consumer, assigns every partition and seeks to the beginning."""
        if self._consumer is not None:
            return
        consumer = Consumer(
            {
                **rdkafka_config(self.bootstrap, client_id="persona-index-follower"),
                # assign() only: never joins this group, never commits
                "group.id": f"persona-index-follower-{id(self):x}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            },
            logger=RDKAFKA_LOG,
        )
        try:
            parts = self._partitions(consumer)
            while not parts:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise TimeoutError(f"topic {self.topic!r} has no partitions (yet)")
                time.sleep(0.2)
                parts = self._partitions(consumer)
            tps = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts]
            consumer.assign(tps)
        except BaseException:
            consumer.close()
            raise
        self._tps = [TopicPartition(self.topic, p) for p in parts]
        self._lows = {}
        self._consumer = consumer
        log.info("following %s (%d partitions) from the beginning", self.topic, len(tps))

    def _partitions(self, consumer: Any) -> list[int]:
        meta = consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
        if meta is None or meta.error is not None:
            return []
        return sorted(meta.partitions)

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            finally:
                self._consumer = None

    def _step(self) -> None:
        """One poll: apply it, record positions, refresh end offsets when due or asked."""
        consumer = self._consumer
        assert consumer is not None
        msgs = consume_ready(
            consumer, self.config.max_poll_records, self.config.poll_timeout_ms / 1000
        )
        records = [(m.key(), m.value()) for m in msgs]
        if records:
            self._apply(records)  # per partition in order; a key lives in one partition
        positions = self._positions_now(consumer)
        with self._cond:
            self._positions = positions
            asked = self._ends_wanted > self._ends_seq
            self._cond.notify_all()
        if asked or time.monotonic() - self._ends_at >= self.config.end_offsets_every_s:
            self._fetch_ends(ask_broker=asked)
        else:
            self._report_lag()

    def _positions_now(self, consumer: Any) -> dict[int, int]:
        """Next offset to read per partition: after the last record returned, else (nothing
        read yet) the partition's low watermark, where reading from the beginning starts."""
        out = {}
        for tp in consumer.position(self._tps):
            if tp.offset >= 0:
                out[tp.partition] = int(tp.offset)
            else:
                out[tp.partition] = self._low(consumer, tp.partition)
        return out

    def _low(self, consumer: Any, partition: int) -> int:
        low = self._lows.get(partition)
        if low is None:
            got = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)
            if got is None or got[0] < 0:
                got = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=5
                )
            low = max(0, int(got[0])) if got is not None else 0
            self._lows[partition] = low
        return low

    def _fetch_ends(self, ask_broker: bool) -> dict[int, int]:
        """End offsets per partition. `ask_broker`: as the broker has them now (for
        `catch_up`: everything written before the call); else from the last fetch responses
        (for `lag()`; no request, except for a partition not fetched yet)."""
        consumer = self._consumer
        assert consumer is not None
        with self._cond:
            wanted = self._ends_wanted
        # max(ListOffsets, high watermark of the last fetch): Tansu 0.6 answers ListOffsets
        # "latest" with the last batch's base offset + 1, too low after multi-record batches
        # (still past every earlier batch, and a batch is read whole); the fetch response's
        # watermark is right. ListOffsets costs ~0.2 s a partition on Tansu: asked for
        # catch_up only, not for the lag refreshed every second.
        ends = {}
        for tp in self._tps:
            got = consumer.get_watermark_offsets(tp, cached=True)
            hi = int(got[1]) if got is not None else -1
            if ask_broker or hi < 0:
                listed = consumer.get_watermark_offsets(tp, timeout=5)
                hi = max(hi, int(listed[1]) if listed is not None else -1)
            ends[tp.partition] = max(0, hi)
        with self._cond:
            self._ends, self._ends_at = ends, time.monotonic()
            self._ends_seq = wanted
            self._cond.notify_all()
        self._report_lag()
        return ends

    def _report_lag(self) -> None:
        lag = self.lag()
        if self.metrics is not None and lag is not None:
            self.metrics.lag_records.set(lag)

    def _apply(self, records: list[tuple[bytes | None, bytes | None]]) -> None:
        # Partitions are independent (a key lives in one), so folding across them is safe.
        batch = decode_batch(records, self.index.dim, self.model_version)
        if batch.upserts:
            try:
                self.index.upsert(list(batch.upserts), np.stack(list(batch.upserts.values())))
            except ValueError:  # an id decode_batch let through: no record may stop the reader
                upsert_each(self.index, batch)
        deleted = self.index.delete(batch.deletes) if batch.deletes else 0
        if self.metrics is not None:
            self.metrics.updates.labels(op="upsert").inc(len(batch.upserts))
            self.metrics.updates.labels(op="delete").inc(deleted)
            for op, count in batch.skipped.items():
                self.metrics.updates.labels(op=op).inc(count)
            self.metrics.size.set(self.index.size)

    # ----- maintainer --------------------------------------------------------------------

    def _maintain_loop(self) -> None:
        last = time.monotonic()
        failures, retry_at = 0, 0.0  # a failing rebuild waits 2**failures checks, <= 10 min
        while not self._stop.wait(self.config.maintenance_check_s):
            due = time.monotonic() - last >= self.config.rebuild_interval_s
            if not (self.index.needs_rebuild() or (due and self.index.changes_since_build)):
                if due:
                    last = time.monotonic()
                continue
            if time.monotonic() < retry_at:
                continue
            try:
                self._rebuild()
                failures = 0
            except Exception:
                failures += 1
                wait = min(600.0, self.config.maintenance_check_s * 2**failures)
                retry_at = time.monotonic() + wait
                if self.metrics is not None:
                    self.metrics.rebuild_failures.inc()
                log.exception("index rebuild failed (%d in a row; next try in %.0f s); the"
                              " previous index stays in service", failures, wait)  # fmt: skip
            finally:
                last = time.monotonic()

    def _rebuild(self) -> None:
        info = self.index.rebuild()
        if self.metrics is not None:
            self.metrics.rebuild_seconds.observe(info.seconds)
            self.metrics.size.set(self.index.size)
            self.metrics.nprobe.clear()
            self.metrics.recall.clear()
            for k, setting in info.params.items():
                self.metrics.nprobe.labels(k=str(k)).set(setting)
                self.metrics.recall.labels(k=str(k)).set(info.recall[k])
            for part, n in self.index.memory().items():
                self.metrics.memory.labels(part=part).set(n)


def upsert_each(index: LookalikeIndex, batch: Batch) -> None:
    """The batch's upserts one at a time, after the index refused them together: each one
    it refuses is counted "invalid" and logged, the others applied."""
    for user, vec in list(batch.upserts.items()):
        try:
            index.upsert([user], vec[None, :])
        except ValueError as exc:
            del batch.upserts[user]
            batch.skipped["invalid"] += 1
            log.warning("update-log record skipped (user %r): %s", user[:64], exc)
