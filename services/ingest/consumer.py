"""The ingest loop: poll -> decode/validate -> commit (dead letters, windows, offsets).

Effectively once: a batch's offsets are committed only after its dead letters and its
window writes were acknowledged; `Ingestor.commit` lists the steps in order and what a
failure at each leaves behind. A crash anywhere replays from the last commit, and the
store's per-user applied offsets turn the replay into a no-op (services/store/LAYOUT.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import KafkaException, Message
from opentelemetry.trace import SpanKind, Tracer
from redis.exceptions import RedisClusterException, RedisError

from contract.codec import BadRecord, Decoded, decode_for_store
from services.config import KafkaConfig, WindowConfig
from services.ingest.dead_letters import (
    DLQ_DETAIL,
    DLQ_REASON,
    DLQ_SOURCE,
    dead_letter,
    source_of,
)
from services.ingest.idle import UntilIdle
from services.ingest.metrics import IngestMetrics
from services.ingest.source import DeadLetters, EventSource, offset_of
from services.ingest.states import StateKeeper
from services.store.layout import StateSpec, pack_update
from services.store.protocols import Windows
from services.store.windows import PackedUpdate, source_label
from services.telemetry import links_from_headers

log = logging.getLogger(__name__)
__all__ = ["DLQ_DETAIL", "DLQ_REASON", "DLQ_SOURCE", "IngestStats", "Ingestor"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """One polled batch, decoded: the window updates, the refused records, and the offsets
    to commit once both are acknowledged (partition -> next offset to read)."""

    updates: list[PackedUpdate]
    bad: list[tuple[Message, BadRecord]]
    offsets: dict[int, int]
    states: StateSpec | None = None  # the versions whose short-term state `updates` feed


@dataclass
class IngestStats:
    consumed: int = 0
    applied: int = 0
    duplicate: int = 0
    replayed: int = 0
    forgotten: int = 0
    dead_lettered: int = 0
    batches: int = 0
    first_batch_at: float | None = None  # time.perf_counter() when the first batch arrived
    last_commit_at: float | None = None  # ... and when the last batch was committed
    caught_up: bool | None = None  # until-idle: every partition committed to its end?

    @property
    def busy_seconds(self) -> float:
        """Seconds from the first batch to the last commit (the group join left out)."""
        if self.first_batch_at is None or self.last_commit_at is None:
            return 0.0
        return self.last_commit_at - self.first_batch_at


class Ingestor:
    """One consumer-group member.

    Args:
        kafka_cfg: brokers, topics, group timeouts.
        window_cfg: window bounds and input limits.
        store: the window store.
        metrics: from `ingest_metrics(registry)`.
        clock_ms: wall clock in ms (for the future-timestamp check); injectable for tests.
        rebuild: apply with event-id dedup alone, ignoring stored offsets (`persona ingest
            --rebuild` with a fresh group refills a shard that lost its data).
        states: keeps the short-term state of the written versions with a head beside the
            windows (services/ingest/states.py); None: no state (serving reads windows).
    """

    def __init__(
        self,
        kafka_cfg: KafkaConfig,
        window_cfg: WindowConfig,
        store: Windows,
        metrics: IngestMetrics,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        rebuild: bool = False,
        tracer: Tracer | None = None,
        states: StateKeeper | None = None,
    ) -> None:
        self.tracer = tracer
        self.states = states
        self.rebuild = rebuild
        self.kcfg = kafka_cfg
        self.wcfg = window_cfg
        self.store = store
        self.metrics = metrics
        self.clock_ms = clock_ms
        self.stats = IngestStats()
        self.assignment_changes: list[tuple[str, list[int]]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-apply")
        self._inflight: tuple[Future[bool], Prepared] | None = None
        self._lag_labels: set[str] = set()
        self._last_offset: dict[int, int] = {}
        self._tid_stale = True
        self._tid_checked = 0.0
        self._known_tid: str | None = None
        self._tid: str | None = None
        self._decode_bug_logged = -1e9

    def _on_rebalance(self, what: str, parts: Sequence[int]) -> None:
        """Runs inside poll, between batches: at most the batch being written is in flight.
        Revoked: it is flushed and committed (the partitions are still ours). Lost: flushed,
        not committed; the new owner replays it and the store skips what was written."""
        self.assignment_changes.append((what, list(parts)))
        log.info("partitions %s: %s", what, list(parts))
        self._tid_stale = True
        if what in ("revoked", "lost"):
            self.commit(offsets=what == "revoked")
            for label in {str(p) for p in parts} & self._lag_labels:
                self.metrics.lag.remove(label)
                self._lag_labels.discard(label)

    def run(
        self, stop: threading.Event, until_idle: bool = False, poll_ms: int = 500
    ) -> IngestStats:
        """Consume until `stop` is set, or, with `until_idle`, until every partition of the
        topic is applied and committed (`stats.caught_up` True) or that wait gave up
        (False; services/ingest/idle.py).

        Batch i+1 is polled and decoded while batch i's dead letters and windows are written
        by the writer thread (the store works on other cores meanwhile); `commit` finishes
        batch i before batch i+1 is handed to the writer (see its steps).
        """
        self._consumer = consumer = EventSource(self.kcfg, self._on_rebalance)
        dlq = DeadLetters(self.kcfg)
        idle = UntilIdle(self.kcfg) if until_idle else None
        try:
            while not stop.is_set():
                # While a batch is being written, only take what is already fetched: when
                # there is none, commit that batch now rather than after the next record.
                batch = consumer.poll(0 if self._inflight else poll_ms / 1000)
                if batch:
                    if self.stats.first_batch_at is None:
                        self.stats.first_batch_at = time.perf_counter()
                    if idle is not None:
                        idle.progress()
                    prepared = self._traced_prepare(batch)
                    self.commit()
                    if prepared is None:
                        continue
                    fut = self._pool.submit(self._write, prepared, dlq, stop)
                    self._inflight = (fut, prepared)
                    self._update_lag(consumer)
                else:
                    self.commit()
                    if stop.is_set():  # the batch may have stopped unwritten: the idle
                        break  # check would commit the positions past it
                    lags = self._update_lag(consumer)
                    done = None if idle is None else idle.check(consumer, lags)
                    if done is not None:
                        self.stats.caught_up = done
                        if done:
                            log.info("caught up with the end of %s; exiting", self.kcfg.topic)
                        break
            self.commit()
        finally:
            self._pool.shutdown(wait=True)
            dlq.close()
            consumer.close()
        return self.stats

    @property
    def in_flight(self) -> bool:
        """A batch is handed to the writer and not committed yet."""
        return self._inflight is not None

    def commit(self, offsets: bool = True) -> None:
        """Finish the batch in flight. Its steps, in order (a failure test for each in
        tests/integration/test_ingest_commit.py):

        1. Dead letters (writer thread, `_write`): every refused record is sent to the
           dead-letter topic with its reason in the headers, and the producer's acks are
           awaited. Fails (KafkaException): raised here, `run` stops; nothing of the batch
           is written or committed, and the restarted consumer reads the batch again.
        2. Windows (writer thread, `_write`): the updates are applied, one script call per
           node and chunk of users, and the store acknowledges. Store errors are retried
           with backoff until the store answers or `stop` is set; stopped: the batch's
           offsets are not committed, and the replay after a restart is skipped by the
           store for what was applied.
        3. Offsets (this thread, which owns the consumer): the next offset of every
           partition of the batch, committed synchronously. Fails (a rebalance moved the
           partitions, the broker is away): logged; whoever reads the partitions next
           replays from the last commit, and the store counts the batch as replays.

        Steps 1-2 of batch i run while batch i+1 is polled and decoded; step 3 of batch i
        always comes before batch i+1 is handed to the writer, and before a rebalance hands
        the partitions on: revoked, they are still ours and committed; lost
        (`offsets=False`), they may be another member's already and are not.
        """
        if self._inflight is None:
            return
        fut, batch = self._inflight
        self._inflight = None
        if not fut.result() or not offsets:  # steps 1-2 (raises step 1's failure)
            return  # not written (stopping while the store is down) or not ours any more
        try:
            self._consumer.commit(batch.offsets)  # step 3
        except KafkaException as exc:
            log.warning("offset commit failed, batch will be replayed: %s", exc)
        self.stats.batches += 1
        self.stats.last_commit_at = time.perf_counter()

    def _write(self, batch: Prepared, dlq: DeadLetters, stop: threading.Event) -> bool:
        """Steps 1 and 2 of `commit`, on the writer thread. False: stopped before the
        windows were written."""
        if batch.bad:
            self._dead_letter(dlq, batch.bad)
        if not self._apply_with_retry(batch.updates, stop, batch.states):
            return False
        if batch.states is not None and self.states is not None:  # serving then only adds
            written, failed = self.states.fold_deltas([u.user_id for u in batch.updates])
            if written:
                self.metrics.short_term_deltas.labels("written").inc(written)
            if failed:
                self.metrics.short_term_deltas.labels("failed").inc(failed)
        return True

    def _topic_id(self) -> str | None:
        """The events topic's id (None if the broker gives none), fetched again after an
        assignment, when offsets went backwards, and every 10 s."""
        if self._tid_stale or time.monotonic() - self._tid_checked > 10:
            try:
                self._tid = self._consumer.topic_id()  # a blocking metadata request
            except KafkaException as exc:
                if self._tid_stale:  # a new incarnation must be known before applying
                    raise
                log.warning("topic id not read again (%s); the known one stays", exc)
            self._tid_stale = False
            self._tid_checked = time.monotonic()
        return self._tid

    def _update_lag(self, consumer: EventSource) -> dict[int, int | None]:
        """Sets the lag gauge of each assigned partition; returns the lags (None: end or
        position not known yet)."""
        lags: dict[int, int | None] = {}
        for p in consumer.assignment():
            try:
                hw = consumer.highwater(p)
                pos = consumer.position(p) if hw is not None else None
            except KafkaException as exc:  # a broker or coordinator hiccup: the lag may
                lags[p] = None  # wait, the consumer must not stop for it
                log.warning("lag of partition %d not read: %s", p, exc)
                continue
            lag = lags[p] = None if hw is None or pos is None else max(0, hw - pos)
            if lag is not None:
                label = str(p)
                self._lag_labels.add(label)
                self.metrics.lag.labels(label).set(lag)
        return lags

    def _traced_prepare(self, batch: Mapping[int, Sequence[Message]]) -> Prepared | None:
        """`_prepare` inside a span linked to the producers' traces (their `traceparent`
        headers), when traces are on."""
        if self.tracer is None:
            return self._prepare(batch)
        msgs = [m for part in batch.values() for m in part]
        with self.tracer.start_as_current_span(
            "persona.ingest batch",
            kind=SpanKind.CONSUMER,
            links=links_from_headers(m.headers() for m in msgs),
            attributes={"messaging.batch.message_count": len(msgs),
                        "messaging.source.name": self.kcfg.topic},
        ):  # fmt: skip
            return self._prepare(batch)

    def _prepare(self, batch: Mapping[int, Sequence[Message]]) -> Prepared | None:
        """Decode and validate a batch. None: the batch was dropped because the topic was
        recreated (it is read again from 0)."""
        now = self.clock_ms()
        # each event with its packed argument of apply.lua, made inside the record's try
        groups: dict[tuple[str, str], list[tuple[Decoded, bytes]]] = defaultdict(list)
        bad: list[tuple[Message, BadRecord]] = []
        commit: dict[int, int] = {}
        n = 0
        wcfg = self.wcfg
        for part, records in batch.items():
            last = self._last_offset.get(part)
            if last is not None and offset_of(records[0]) <= last:
                self._tid_stale = True  # offsets went back: a replay, or a new topic incarnation
            self._last_offset[part] = offset_of(records[-1])
        tid = self._topic_id()
        if self._known_tid is not None and tid != self._known_tid:
            # The topic was deleted and created again (or the broker lost its log): offsets
            # restarted at 0, and a position kept from before may skip the new records. Read
            # the new incarnation from its beginning; event-id dedup ignores what was applied.
            log.warning(
                "events topic id changed (%s -> %s): re-reading it from the start",
                self._known_tid,
                tid,
            )
            self._known_tid = tid
            # the batch in flight is the old incarnation's: written, its offsets not committed
            # (they would place the group past the new incarnation's first records)
            self.commit(offsets=False)
            self._consumer.seek_to_beginning()
            self._last_offset.clear()
            try:  # a restart before the next commit reads the new incarnation from 0 too
                self._consumer.commit({p: 0 for p in self._consumer.assignment()})
            except KafkaException as exc:
                log.warning("offsets of the new incarnation not reset (%s)", exc)
            return None
        self._known_tid = tid
        for part, records in batch.items():
            p = source_label(part, tid)
            for r in records:
                try:
                    d = decode_for_store(r.value(), wcfg, now)
                    packed = pack_update(offset_of(r), d.event_id, d.ts_ms, d.record)
                except BadRecord as exc:
                    bad.append((r, exc))
                    continue
                except Exception as exc:  # a decoder bug must not stop the partition
                    bad.append((r, self._decode_bug(r, exc)))
                    continue
                groups[(d.user_id, p)].append((d, packed))
            n += len(records)
            commit[part] = offset_of(records[-1]) + 1
        self.metrics.consumed.inc(n)
        self.metrics.batch_records.observe(n)
        self.stats.consumed += n
        spec, rows = None, None
        if self.states is not None:  # the rows of every event, in `groups`' order
            spec, rows = self.states.record_rows([d for evs in groups.values() for d, _ in evs])
        updates, lo = [], 0
        for (uid, p), evs in groups.items():
            blob = b"".join(packed for _, packed in evs)
            ups = b"" if rows is None else rows[lo : lo + len(evs)].tobytes()
            updates.append(PackedUpdate(uid, p, blob, ups))
            lo += len(evs)
        return Prepared(updates, bad, commit, spec)

    def _decode_bug(self, r: Message, exc: Exception) -> BadRecord:
        """A decoder exception other than `BadRecord` (a bug: tests/unit/test_codec_fuzz.py
        looks for them) as a dead letter with reason `decode_error`; logged with its
        traceback at most once a minute."""
        now = time.monotonic()
        if now - self._decode_bug_logged > 60:
            self._decode_bug_logged = now
            log.error("decoding %s failed; dead-lettered", source_of(r), exc_info=exc)
        return BadRecord("decode_error", f"{type(exc).__name__}: {exc!s:.200}")

    def _dead_letter(self, dlq: DeadLetters, bad: list[tuple[Message, BadRecord]]) -> None:
        """Whole, by reference, or logged and skipped (services/ingest/dead_letters.py)."""
        self.stats.dead_lettered += dead_letter(dlq, bad, self.metrics)  # raises: step 1

    def _apply_with_retry(
        self, updates: list[PackedUpdate], stop: threading.Event, states: StateSpec | None
    ) -> bool:
        delay = 0.1
        while True:
            t0 = time.perf_counter()
            try:
                res = self.store.apply_packed(updates, rebuild=self.rebuild, states=states)
            except (RedisError, RedisClusterException) as exc:
                # RedisClusterException: a slot no node serves, a map that cannot be learnt
                # (a failover): retried as the store being away, not a crash
                self.metrics.store_errors.inc()
                log.warning("window write failed (%s); retrying in %.1f s", exc, delay)
                if stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            self.metrics.batch_write_seconds.observe(time.perf_counter() - t0)
            self.metrics.applied.inc(res.applied)
            self.metrics.duplicate.inc(res.duplicate)
            self.metrics.replayed.inc(res.replayed)
            self.metrics.forgotten.inc(res.forgotten)
            self.metrics.trimmed.inc(res.trimmed)
            for ln in res.window_lengths:
                self.metrics.window_length.observe(ln)
            self.stats.applied += res.applied
            self.stats.duplicate += res.duplicate
            self.stats.replayed += res.replayed
            self.stats.forgotten += res.forgotten
            return True
