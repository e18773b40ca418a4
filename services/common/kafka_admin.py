"""Topic helpers: create topics idempotently, read end offsets (kafka-python), a topic's id.

They work the same against the embedded Tansu broker and a production Kafka cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.kafka import security_kwargs

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36


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

    Raises the broker's error for any failure other than "topic already exists".
    """
    from kafka import errors as kafka_errors
    from kafka.admin import KafkaAdminClient

    wanted = {
        s.name: {
            "num_partitions": s.partitions,
            "replication_factor": replication_factor,
            "configs": dict(s.config or {}),
        }
        for s in specs
    }
    if not wanted:
        return
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **security_kwargs()
    )
    try:
        result: dict[str, Any] = admin.create_topics(
            wanted, timeout_ms=timeout_ms, raise_errors=False
        )
        for topic in result["topics"]:
            code = topic["error_code"]
            if code == 0:
                log.info("created topic %s", topic["name"])
            elif code != _TOPIC_ALREADY_EXISTS:
                error = kafka_errors.for_code(code)
                raise error(f"creating topic {topic['name']}: {topic.get('error_message')}")
    finally:
        admin.close()


def end_offsets(bootstrap: str, topic: str, *, timeout_ms: int = 10_000) -> dict[int, int]:
    """The log-end offset (high watermark) of every partition of `topic`, as {partition: offset}.

    Read from a fetch response, not only from ListOffsets: Tansu 0.6 answers ListOffsets
    "latest" with the last batch's *base* offset + 1, so after one batch of 5 records it says 1.
    The fetch response's high watermark is right, so we fetch from that base offset and take the
    larger of the two (on Apache Kafka both agree).
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        request_timeout_ms=timeout_ms,
        **security_kwargs(),
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=64 * 1024,
    )
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise KeyError(f"topic {topic!r} not found at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        listed = {tp: int(off) for tp, off in consumer.end_offsets(tps).items()}
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(listed[tp] - 1, 0))
        deadline = time.monotonic() + timeout_ms / 1000
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fetch response for every partition of {topic!r}")
            consumer.poll(timeout_ms=50)
        return {tp.partition: max(listed[tp], int(consumer.highwater(tp) or 0)) for tp in tps}
    finally:
        consumer.close()


def topic_id(bootstrap: str, topic: str) -> str | None:
    """The topic's id (hex), which changes when a topic is deleted and created again; None
    when the broker does not report ids (Kafka < 2.8). Ingest keys applied offsets by it."""
    from confluent_kafka.admin import AdminClient

    from services.common.kafka import RDKAFKA_LOG, rdkafka_config
    from services.common.kafka import topic_id as describe

    return describe(AdminClient(rdkafka_config(bootstrap), logger=RDKAFKA_LOG), topic)
