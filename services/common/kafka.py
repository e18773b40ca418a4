"""Kafka clients built from `KafkaConfig`, so every service connects the same way. Every
role uses librdkafka (confluent-kafka): the ingest consumer (services/ingest/source.py),
the index follower (services/index/follower.py), the producers (`producer`: events, the
refresher's update log, forgets) and admin (`common/kafka_admin.py`, `topic_id`).

Security comes from the environment (never from flags, which show in `ps`), as librdkafka
settings (`rdkafka_config`):

- `PERSONA_KAFKA_SECURITY_PROTOCOL` -> `security.protocol` (PLAINTEXT, SSL, SASL_PLAINTEXT,
  SASL_SSL)
- `PERSONA_KAFKA_SASL_MECHANISM` -> `sasl.mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
- `PERSONA_KAFKA_SASL_USERNAME` -> `sasl.username`
- `PERSONA_KAFKA_SASL_PASSWORD_FILE` (or `PERSONA_KAFKA_SASL_PASSWORD`) -> `sasl.password`
- `PERSONA_KAFKA_SSL_CAFILE`, `_SSL_CERTFILE`, `_SSL_KEYFILE` -> `ssl.ca.location`,
  `ssl.certificate.location`, `ssl.key.location`
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
)
from confluent_kafka.admin import AdminClient

from services.config import KafkaConfig

log = logging.getLogger(__name__)
RDKAFKA_LOG = logging.getLogger("rdkafka")  # librdkafka's own log lines, for `logger=`
# librdkafka's own (client-side) error codes are the ones named with a leading underscore
MSG_TIMED_OUT = KafkaError._MSG_TIMED_OUT  # noqa: SLF001

_RDKAFKA_NAMES = {
    "SECURITY_PROTOCOL": "security.protocol",
    "SASL_MECHANISM": "sasl.mechanism",
    "SASL_USERNAME": "sasl.username",
    "SSL_CAFILE": "ssl.ca.location",
    "SSL_CERTFILE": "ssl.certificate.location",
    "SSL_KEYFILE": "ssl.key.location",
}


def rdkafka_config(
    bootstrap: str, client_id: str = "persona", environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """librdkafka settings: the brokers plus the `PERSONA_KAFKA_*` security options
    (none set: plaintext)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": client_id}
    for name, opt in _RDKAFKA_NAMES.items():
        if env.get(f"PERSONA_KAFKA_{name}"):
            out[opt] = env[f"PERSONA_KAFKA_{name}"]
    pw_file = env.get("PERSONA_KAFKA_SASL_PASSWORD_FILE")
    if pw_file:
        out["sasl.password"] = Path(pw_file).read_text().strip()
    elif env.get("PERSONA_KAFKA_SASL_PASSWORD"):
        out["sasl.password"] = env["PERSONA_KAFKA_SASL_PASSWORD"]
    return out


def consume_ready(consumer: Consumer, max_records: int, timeout_s: float) -> list[Message]:
    """Up to `max_records` records from a librdkafka consumer: what is already fetched, at
    once; when nothing is, the first records to arrive within `timeout_s` (0: none).

    librdkafka's `consume(n, timeout)` alone sits until n records came or the timeout
    passed, so the tail of a burst, or a quiet topic, would wait the whole timeout. Rebalance
    callbacks run inside these calls. Raises KafkaException on a fatal error; transient
    ones (a broker away) are logged and dropped, librdkafka retries by itself.
    """
    msgs = consumer.consume(max_records, 0)
    if not msgs and timeout_s > 0:
        msgs = consumer.consume(1, timeout_s)
        if msgs:
            msgs += consumer.consume(max_records - 1, 0)
    out = []
    for m in msgs:
        err = m.error()
        if err is None:
            out.append(m)
        elif err.fatal():
            raise KafkaException(err)
        else:
            log.warning("kafka consumer: %s", err)
    return out


def topic_id(admin: AdminClient, topic: str) -> str | None:
    """The topic's id as 32 hex digits, None if the broker gives none (Kafka < 2.8). It
    changes when a topic is deleted and created again; ingest keys applied offsets by it.
    A metadata request: call it now and then, not per batch."""
    fut = admin.describe_topics(TopicCollection([topic]), request_timeout=10)
    tid = fut[topic].result().topic_id
    if tid is None:
        return None
    hi = tid.get_most_significant_bits() & (1 << 64) - 1
    lo = tid.get_least_significant_bits() & (1 << 64) - 1
    return None if hi == lo == 0 else f"{hi:016x}{lo:016x}"


class AckedProducer:
    """A librdkafka producer whose `flush` raises unless every record sent since the last
    flush was acknowledged: a failed or unacknowledged send is never dropped silently.

    `send` queues (librdkafka batches and retries by itself); `flush(timeout_s)` waits for
    the acks and raises KafkaException with the first delivery error (a record not delivered
    within `message.timeout.ms` is one), or with `_MSG_TIMED_OUT` when records are still
    unacknowledged after `timeout_s` (they stay queued: a later flush may still deliver them).
    `timeout_s` None waits until every record is acknowledged or has failed. `close` waits
    for what is queued and logs what was not delivered; it does not raise (it runs in
    `finally` blocks, often with an error already on its way): call `flush` to know.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._producer = Producer(dict(config), logger=RDKAFKA_LOG)
        self._failed: list[KafkaError] = []  # delivery reports run inside poll / flush

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(err)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record (`partition` None: by the key's hash). Raises KafkaException when
        librdkafka refuses it before sending (larger than `message.max.bytes`)."""
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    headers=list(headers) if headers else None,
                    on_delivery=self._delivered,
                    **extra,
                )
                break
            except BufferError:  # the local queue is full: let it drain, then again
                self._producer.poll(0.1)
        self._producer.poll(0)  # serve the delivery reports that are in

    def flush(self, timeout_s: float | None = None) -> None:
        left = self._producer.flush() if timeout_s is None else self._producer.flush(timeout_s)
        failed, self._failed = self._failed, []
        if failed:
            log.warning("kafka producer: %d records not delivered: %s", len(failed), failed[0])
            raise KafkaException(failed[0])
        if left:
            raise KafkaException(
                KafkaError(MSG_TIMED_OUT, f"{left} records not acknowledged within {timeout_s:g} s")
            )

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait up to `timeout_s` for what is queued; log, not raise, what was not delivered.
        librdkafka frees the producer when it is dropped."""
        left = self._producer.flush(timeout_s)
        failed, self._failed = self._failed, []
        if left or failed:
            log.warning(
                "kafka producer closed with %d records unacknowledged, %d not delivered%s",
                left, len(failed), f" ({failed[0]})" if failed else "",
            )  # fmt: skip


def producer(cfg: KafkaConfig, overrides: Mapping[str, Any] | None = None) -> AckedProducer:
    """The producer every service sends with; `overrides` are librdkafka settings.

    Idempotent (librdkafka's `enable.idempotence`, as kafka-python 3 had by default; Tansu
    answers InitProducerId): acks from all in-sync replicas, retries without duplicates.
    One request in flight per connection keeps each partition's order on retries;
    `max.in.flight` up to 5 keeps it too while idempotence is on (bulk event sends use 5).
    A record not acknowledged within 120 s fails (`message.timeout.ms`, kafka-python's
    `delivery_timeout_ms`; librdkafka's default is 300 s).
    """
    config: dict[str, Any] = {
        **rdkafka_config(cfg.bootstrap),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 256 * 1024,
        "max.in.flight.requests.per.connection": 1,
        "message.timeout.ms": 120_000,
    }
    config.update(overrides or {})
    return AckedProducer(config)
