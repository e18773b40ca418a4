"""Kafka clients built from `KafkaConfig`, so every service connects the same way."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from services.config import KafkaConfig


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
    kwargs.update(overrides)
    return KafkaProducer(**kwargs)
