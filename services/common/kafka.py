"""Kafka clients built from `KafkaConfig`, so every service connects the same way.

Security comes from the environment (never from flags, which show in `ps`):

- `PERSONA_KAFKA_SECURITY_PROTOCOL` -> `security_protocol` (PLAINTEXT, SSL, SASL_PLAINTEXT,
  SASL_SSL)
- `PERSONA_KAFKA_SASL_MECHANISM` -> `sasl_mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
- `PERSONA_KAFKA_SASL_USERNAME` -> `sasl_plain_username`
- `PERSONA_KAFKA_SASL_PASSWORD_FILE` (or `PERSONA_KAFKA_SASL_PASSWORD`) -> `sasl_plain_password`
- `PERSONA_KAFKA_SSL_CAFILE`, `_SSL_CERTFILE`, `_SSL_KEYFILE` -> `ssl_cafile`, `ssl_certfile`,
  `ssl_keyfile`

`rdkafka_config` gives the same settings under librdkafka's names, for the two readers that
use confluent-kafka: the ingest consumer (services/ingest/source.py) and the index follower
(services/index/follower.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicCollection
from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer, KafkaProducer

from services.config import KafkaConfig

log = logging.getLogger(__name__)
RDKAFKA_LOG = logging.getLogger("rdkafka")  # librdkafka's own log lines, for `logger=`

_PLAIN = {
    "SECURITY_PROTOCOL": "security_protocol",
    "SASL_MECHANISM": "sasl_mechanism",
    "SASL_USERNAME": "sasl_plain_username",
    "SSL_CAFILE": "ssl_cafile",
    "SSL_CERTFILE": "ssl_certfile",
    "SSL_KEYFILE": "ssl_keyfile",
}


def security_kwargs(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """kafka-python security options from `PERSONA_KAFKA_*` variables (empty: plaintext)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {
        opt: env[f"PERSONA_KAFKA_{name}"]
        for name, opt in _PLAIN.items()
        if env.get(f"PERSONA_KAFKA_{name}")
    }
    pw_file = env.get("PERSONA_KAFKA_SASL_PASSWORD_FILE")
    if pw_file:
        out["sasl_plain_password"] = Path(pw_file).read_text().strip()
    elif env.get("PERSONA_KAFKA_SASL_PASSWORD"):
        out["sasl_plain_password"] = env["PERSONA_KAFKA_SASL_PASSWORD"]
    return out


_RDKAFKA_NAMES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
}


def rdkafka_config(
    bootstrap: str, client_id: str = "persona", environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """librdkafka (confluent-kafka) settings: the brokers plus the `PERSONA_KAFKA_*` security
    options, the same ones `security_kwargs` gives kafka-python."""
    out: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": client_id}
    for opt, value in security_kwargs(environ).items():
        out[_RDKAFKA_NAMES[opt]] = value
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
    """The topic's id as 32 hex digits (as kafka-python writes it), None if the broker gives
    none (Kafka < 2.8). It changes when a topic is deleted and created again; ingest keys
    applied offsets by it. A metadata request: call it now and then, not per batch."""
    fut = admin.describe_topics(TopicCollection([topic]), request_timeout=10)
    tid = fut[topic].result().topic_id
    if tid is None:
        return None
    hi = tid.get_most_significant_bits() & (1 << 64) - 1
    lo = tid.get_least_significant_bits() & (1 << 64) - 1
    return None if hi == lo == 0 else f"{hi:016x}{lo:016x}"


def group_consumer(cfg: KafkaConfig, **overrides: Any) -> KafkaConsumer:
    """A consumer in `cfg.group_id` with manual commits (offsets follow the store's acks)."""
    kwargs: dict[str, Any] = dict(
        bootstrap_servers=cfg.bootstrap,
        group_id=cfg.group_id,
        enable_auto_commit=False,
        auto_offset_reset=cfg.auto_offset_reset,
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=cfg.heartbeat_interval_ms,
        max_poll_interval_ms=cfg.max_poll_interval_ms,
        max_poll_records=cfg.max_poll_records,
        client_id="persona-ingest",
    )
    kwargs.update(security_kwargs())
    kwargs.update(overrides)
    return KafkaConsumer(**kwargs)


def producer(cfg: KafkaConfig, **overrides: Any) -> KafkaProducer:
    kwargs: dict[str, Any] = dict(
        bootstrap_servers=cfg.bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=1,  # keep each partition's order on retries
        client_id="persona",
    )
    kwargs.update(security_kwargs())
    kwargs.update(overrides)
    return KafkaProducer(**kwargs)
