"""Topic helpers over kafka-python's admin client: create topics idempotently, read end offsets.

They work the same against the embedded Tansu broker and a production Kafka cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
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
    """The log-end offset of every partition of `topic`, as {partition: offset}."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise KeyError(f"topic {topic!r} not found at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        offsets = consumer.end_offsets(tps)
        return {tp.partition: int(off) for tp, off in offsets.items()}
    finally:
        consumer.close()
