"""One typed settings object for the services, built once from flags and PERSONA_* variables.

Precedence: a flag given on the command line, else the `PERSONA_<NAME>` environment variable,
else the default here. Components receive the frozen sub-config they need and nothing else.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from contract import topics

DAY_MS = 86_400_000


def env(name: str, default: str) -> str:
    return os.environ.get(f"PERSONA_{name}", default)


@dataclass(frozen=True)
class KafkaConfig:
    """Where the events are and how the consumer group behaves.

    The group timeouts default to values that join quickly on the embedded Tansu broker
    (about 3 s); production Kafka usually wants larger ones (session 45 s).
    """

    bootstrap: str = "127.0.0.1:9092"
    topic: str = topics.EVENTS
    dlq_topic: str = topics.DEAD_LETTERS
    group_id: str = "persona-ingest"
    partitions: int = 4
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 30000
    max_poll_records: int = 2000
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"


@dataclass(frozen=True)
class WindowConfig:
    """Per-user window bounds and what the consumer accepts."""

    max_events: int = 256
    horizon_ms: int = 30 * DAY_MS
    max_future_ms: int = DAY_MS  # an event stamped further ahead of the wall clock is refused
    max_payload_bytes: int = 64 * 1024
    max_id_bytes: int = 256
    max_props: int = 64
    max_value_bytes: int = 1024


@dataclass(frozen=True)
class Settings:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    redis: str = "redis://127.0.0.1:6379"
    models: Path = Path("models")
    metrics_port: int = 0  # 0: no /metrics endpoint


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """--bootstrap / --redis (and topic) for every command that talks to the stack."""
    p.add_argument(
        "--bootstrap",
        default=env("BOOTSTRAP", KafkaConfig.bootstrap),
        help="Kafka bootstrap HOST:PORT (env PERSONA_BOOTSTRAP)",
    )
    p.add_argument(
        "--redis",
        default=env("REDIS", Settings.redis),
        help="redis://HOST:PORT of a single node or any node of a cluster (env PERSONA_REDIS)",
    )
    p.add_argument(
        "--topic", default=env("TOPIC", KafkaConfig.topic), help="events topic (env PERSONA_TOPIC)"
    )


def add_models_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models",
        type=Path,
        default=Path(env("MODELS", "models")),
        help="model registry folder (env PERSONA_MODELS)",
    )


def add_metrics_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("METRICS_PORT", "0")),
        help="serve Prometheus /metrics on this port; 0 = off (env PERSONA_METRICS_PORT)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The one Settings object for a command, from its parsed flags (env already applied)."""
    kafka = KafkaConfig(
        bootstrap=getattr(args, "bootstrap", KafkaConfig.bootstrap),
        topic=getattr(args, "topic", KafkaConfig.topic),
        dlq_topic=env("DLQ_TOPIC", topics.dead_letters(getattr(args, "topic", KafkaConfig.topic))),
        group_id=getattr(args, "group", None) or env("GROUP", KafkaConfig.group_id),
        partitions=int(env("PARTITIONS", str(KafkaConfig.partitions))),
        session_timeout_ms=int(env("SESSION_TIMEOUT_MS", str(KafkaConfig.session_timeout_ms))),
        heartbeat_interval_ms=int(
            env("HEARTBEAT_INTERVAL_MS", str(KafkaConfig.heartbeat_interval_ms))
        ),
        max_poll_interval_ms=int(
            env("MAX_POLL_INTERVAL_MS", str(KafkaConfig.max_poll_interval_ms))
        ),
        max_poll_records=int(env("MAX_POLL_RECORDS", str(KafkaConfig.max_poll_records))),
    )
    window = WindowConfig(
        max_events=int(env("WINDOW_EVENTS", str(WindowConfig.max_events))),
        horizon_ms=int(env("WINDOW_HORIZON_MS", str(WindowConfig.horizon_ms))),
        max_future_ms=int(env("MAX_FUTURE_MS", str(WindowConfig.max_future_ms))),
        max_payload_bytes=int(env("MAX_PAYLOAD_BYTES", str(WindowConfig.max_payload_bytes))),
    )
    return Settings(
        kafka=kafka,
        window=window,
        redis=getattr(args, "redis", Settings.redis),
        models=getattr(args, "models", Settings.models),
        metrics_port=getattr(args, "metrics_port", 0),
    )
