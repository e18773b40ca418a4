"""Topic helpers (librdkafka): create topics idempotently, read end offsets, a topic's id.

They work the same against the embedded Tansu broker and a production Kafka cluster.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from services.common.kafka import RDKAFKA_LOG, rdkafka_config
from services.common.kafka import topic_id as describe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """One topic to create: name, partition count and optional topic configs."""

    name: str
    partitions: int = 1
    config: Mapping[str, str] | None = None


def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    replication_factor: int = 1,
    timeout_ms: int = 10_000,
) -> None:
    """Create each topic in `specs` that does not exist yet; existing topics are left as they are.

    Raises KafkaException with the broker's error for any failure other than "topic already
    exists" (the broker away: `_TIMED_OUT` after `timeout_ms`).
    """
    wanted = [
        NewTopic(s.name, s.partitions, replication_factor, config=dict(s.config or {}))
        for s in specs
    ]
    if not wanted:
        return
    admin = AdminClient(rdkafka_config(bootstrap), logger=RDKAFKA_LOG)
    futures = admin.create_topics(
        wanted, operation_timeout=timeout_ms / 1000, request_timeout=timeout_ms / 1000
    )
    for name, fut in futures.items():
        try:
            fut.result()
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaException(
                    KafkaError(exc.args[0].code(), f"creating topic {name}: {exc.args[0].str()}")
                ) from exc


def end_offsets(bootstrap: str, topic: str, *, timeout_ms: int = 10_000) -> dict[int, int]:
    """The log-end offset (high watermark) of every partition of `topic`, as {partition: offset}.

    Read from a fetch response, not only from ListOffsets: Tansu 0.6 answers ListOffsets
    "latest" with the last batch's *base* offset + 1, so after one batch of 5 records it says 1.
    The fetch response's high watermark is right, so we fetch from that base offset and take the
    larger of the two (on Apache Kafka both agree).
    """
    consumer = Consumer(
        {
            **rdkafka_config(bootstrap),
            # assign() only: never joins this group, never commits
            "group.id": f"persona-end-offsets-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": 10,
            "max.partition.fetch.bytes": 64 * 1024,
        },
        logger=RDKAFKA_LOG,
    )
    try:
        timeout_s = timeout_ms / 1000
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KeyError(f"topic {topic!r} not found at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        listed = {}
        for tp in tps:
            _, hi = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            listed[tp.partition] = int(hi)
        consumer.assign([TopicPartition(topic, p, max(o - 1, 0)) for p, o in listed.items()])
        deadline = time.monotonic() + timeout_s
        fetched: dict[int, int] = {}
        while len(fetched) < len(tps):
            for tp in tps:
                got = consumer.get_watermark_offsets(tp, cached=True)  # the last fetch's
                if got is not None and got[1] >= 0:
                    fetched[tp.partition] = int(got[1])
            if len(fetched) == len(tps):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fetch response for every partition of {topic!r}")
            consumer.consume(64, 0.05)
        return {p: max(listed[p], fetched[p]) for p in listed}
    finally:
        consumer.close()


def topic_id(bootstrap: str, topic: str) -> str | None:
    """The topic's id (hex), which changes when a topic is deleted and created again; None
    when the broker does not report ids (Kafka < 2.8). Ingest keys applied offsets by it."""
    return describe(AdminClient(rdkafka_config(bootstrap), logger=RDKAFKA_LOG), topic)
