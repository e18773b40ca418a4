"""The events topic as the ingest loop sees it: librdkafka (confluent-kafka) underneath.

librdkafka's fetcher runs in C threads and hands over records already parsed (kafka-python,
which this path used first, decoded every record batch in Python on the consuming thread:
about 18 us an event here, more than Persona's own decode and validation). Every other
Kafka client in Persona is librdkafka too (`services/common/kafka.py`).
`benchmarks/ingest.py` measures the bare client beside the full path.

Example::

    src = EventSource(cfg, on_rebalance=lambda what, parts: ...)
    batch = src.poll(0.5)                    # {partition: [Message, ...]}
    src.commit({0: 1234})                    # next offset to read, per partition
    src.close()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from services.common.kafka import RDKAFKA_LOG, consume_ready, rdkafka_config, topic_id
from services.config import KafkaConfig

RebalanceHook = Callable[[str, Sequence[int]], None]
# Producer errors that belong to one record (its size, its form): sending it again fails
# the same way, so the dead-letter path sends a reference instead (services/ingest/dead_letters.py).
REFUSED_RECORD = frozenset(
    (
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.RECORD_LIST_TOO_LARGE,
    )
)
Headers = list[tuple[str, str | bytes | None]]


class EventSource:
    """One member of `cfg.group_id` reading `cfg.topic`, with manual commits.

    `on_rebalance(what, partitions)` runs on the polling thread, inside `poll`, with what
    one of "assigned", "revoked" (the partitions are still ours: a commit there succeeds)
    and "lost" (they may already be another member's: a commit there fails).
    """

    def __init__(self, cfg: KafkaConfig, on_rebalance: RebalanceHook) -> None:
        self.topic = cfg.topic
        self.max_records = cfg.max_poll_records
        self._bootstrap = cfg.bootstrap
        self._reset_latest = cfg.auto_offset_reset == "latest"
        self._consumer = Consumer(
            {
                **rdkafka_config(cfg.bootstrap, client_id="persona-ingest"),
                "group.id": cfg.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": cfg.auto_offset_reset,
                "session.timeout.ms": cfg.session_timeout_ms,
                "heartbeat.interval.ms": cfg.heartbeat_interval_ms,
                "max.poll.interval.ms": cfg.max_poll_interval_ms,
            },
            logger=RDKAFKA_LOG,
        )
        self._admin: AdminClient | None = None
        # Broker answers `highwater` / `position` fall back on, per (what, partition); they
        # hold until the assignment changes, so the per-batch lag update asks once, not
        # every batch.
        self._asked: dict[tuple[str, int], int] = {}

        def hook(what: str) -> Callable[[Consumer, list[TopicPartition]], None]:
            def changed(_c: Consumer, tps: list[TopicPartition]) -> None:
                self._asked.clear()
                on_rebalance(what, sorted(tp.partition for tp in tps))

            return changed

        self._consumer.subscribe(
            [cfg.topic], on_assign=hook("assigned"), on_revoke=hook("revoked"), on_lost=hook("lost")
        )

    def poll(self, timeout_s: float) -> dict[int, list[Message]]:
        """Up to `max_poll_records` records, by partition, in offset order: what is already
        fetched, at once, else the first to arrive within `timeout_s` (`consume_ready`)."""
        out: dict[int, list[Message]] = {}
        for m in consume_ready(self._consumer, self.max_records, timeout_s):
            p = cast(int, m.partition())  # set on every record without an error
            part = out.get(p)
            if part is None:
                out[p] = [m]
            else:
                part.append(m)
        return out

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit `offsets` (partition -> next offset to read); raises KafkaException."""
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        for tp in self._consumer.commit(offsets=tps, asynchronous=False) or []:
            if tp.error is not None:
                raise KafkaException(tp.error)

    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment())

    def highwater(self, partition: int) -> int | None:
        """End offset from the last fetch response (no request); before any record of the
        partition was fetched, the broker's answer if it says the partition is empty; else None.

        Not ListOffsets otherwise: Tansu 0.6 answers it with a too-low end offset after
        multi-record batches."""
        tp = TopicPartition(self.topic, partition)
        got = self._consumer.get_watermark_offsets(tp, cached=True)
        if got is not None and got[1] >= 0:
            return int(got[1])
        # librdkafka caches the end offset only from fetched records: ask the broker, and
        # trust its answer only for an empty partition (where a too-low answer is no risk).
        return self._ask("empty-end", partition, lambda lo, hi: hi if 0 <= hi <= lo else None)

    def position(self, partition: int) -> int | None:
        """Next offset this member will read: after the last record returned, else the
        group's committed offset, else where `auto_offset_reset` starts it (the low end, or
        with "latest" the end); None when not known yet."""
        tp = TopicPartition(self.topic, partition)
        (pos,) = self._consumer.position([tp])
        if pos.offset >= 0:
            return int(pos.offset)
        com = self._asked.get(("committed", partition))
        if com is None:
            (got,) = self._consumer.committed([tp], timeout=10)
            com = self._asked["committed", partition] = int(got.offset)
        if com >= 0:
            return com
        if self._reset_latest:
            # Nothing read, no commit, reading from the end: the member starts where the
            # partition ended when first looked at (kept, so records that arrive later
            # count as unread until they are returned).
            start = self._asked.get(("start", partition))
            if start is None:
                start = self.highwater(partition)
                if start is not None:
                    self._asked["start", partition] = start
            return start
        # nothing read, no commit: reading starts at the low end
        return self._ask("low", partition, lambda lo, _hi: lo if lo >= 0 else None)

    def _ask(self, what: str, partition: int, pick: Callable[[int, int], int | None]) -> int | None:
        """`pick(low, high)` of the broker's watermarks, asked once per assignment (a None
        answer is not kept: it is asked again next time)."""
        key = (what, partition)
        if key not in self._asked:
            got = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=5
            )
            picked = pick(int(got[0]), int(got[1])) if got is not None else None
            if picked is None:
                return None
            self._asked[key] = picked
        return self._asked[key]

    def committed(self, partitions: Sequence[int]) -> dict[int, int]:
        """The group's committed offsets (next offset to read) of any partitions of the
        topic, this member's or not; -1 where none is committed. Raises KafkaException."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        out = {}
        for tp in self._consumer.committed(tps, timeout=10):
            if tp.error is not None:
                raise KafkaException(tp.error)
            out[tp.partition] = int(tp.offset)
        return out

    def seek_to_beginning(self) -> None:
        self._asked.clear()
        for tp in self._consumer.assignment():
            self._consumer.seek(TopicPartition(self.topic, tp.partition, OFFSET_BEGINNING))

    def topic_id(self) -> str | None:
        """The topic's id (`common.kafka.topic_id`): a metadata request, now and then."""
        if self._admin is None:
            self._admin = AdminClient(rdkafka_config(self._bootstrap), logger=RDKAFKA_LOG)
        return topic_id(self._admin, self.topic)

    def close(self) -> None:
        """Leave the group (no commit)."""
        self._consumer.close()


class DeadLetters:
    """A producer for the dead-letter topic that waits for every send to be acknowledged."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.topic = cfg.dlq_topic
        self._producer = Producer(
            {
                **rdkafka_config(cfg.bootstrap, client_id="persona-ingest-dlq"),
                "acks": "all",
                "enable.idempotence": False,
                "max.in.flight.requests.per.connection": 1,
                "linger.ms": 5,
            },
            logger=RDKAFKA_LOG,
        )

    def send_all(self, records: Sequence[tuple[bytes | None, bytes, Headers]]) -> list[int]:
        """Send (key, value, headers) records and wait until each is acknowledged or refused.

        Returns the indices of the records refused for themselves (too large for the
        producer or the topic, an invalid record: `REFUSED_RECORD`), which no retry
        would deliver. Raises KafkaException for anything else (the broker away, the topic
        missing, acks not in within 30 s).
        """
        failed: list[KafkaError] = []
        refused: list[int] = []

        def done(i: int) -> Callable[[KafkaError | None, Message], None]:
            def callback(err: KafkaError | None, _msg: Message) -> None:
                if err is None:
                    return
                if err.code() in REFUSED_RECORD:
                    refused.append(i)
                else:
                    failed.append(err)

            return callback

        for i, (key, value, headers) in enumerate(records):
            while True:
                try:
                    self._producer.produce(
                        self.topic, value, key, headers=headers, on_delivery=done(i)
                    )
                except BufferError:  # the local queue is full: let it drain, then again
                    self._producer.poll(0.5)
                    continue
                except KafkaException as exc:  # refused before sending (message.max.bytes)
                    if exc.args[0].code() not in REFUSED_RECORD:
                        raise
                    refused.append(i)
                break
            self._producer.poll(0)
        left = self._producer.flush(30)
        if failed or left:
            raise KafkaException(failed[0] if failed else f"{left} dead letters unacknowledged")
        return sorted(refused)

    def close(self) -> None:
        self._producer.flush(10)


def offset_of(m: Message) -> int:
    """A record's offset (typed: librdkafka sets it on every record `poll` returns)."""
    return cast(int, m.offset())
