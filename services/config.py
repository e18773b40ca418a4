"""The configs every service shares, and how a flag says which setting it sets.

Each component owns one frozen config (here: `KafkaConfig`, `WindowConfig`, `StoreConfig`,
`ProcessConfig`, `TelemetryConfig`; `RefreshConfig`, `ServeConfig`, `IndexConfig` beside
their components). Its field defaults are the only place a default is written. The settings
tree (`services/cli/settings.py`) names, for each field, its `PERSONA_*` variable, validates
what the flags and the environment give, and hands each component its config.

A command's flag for a setting is declared with `setting_flag`: it carries the setting's
path (`"refresh.batch_size"`), defaults to None (= not given), and the tree fills in the
effective value after parsing. Precedence: flag, then `PERSONA_<NAME>`, then the default.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contract import topics
from contract.record import MAX_ID_BYTES

DAY_MS = 86_400_000


@dataclass(frozen=True)
class KafkaConfig:
    """Where the events are and how the consumer group behaves.

    The group timeouts default to values that join quickly on the embedded Tansu broker
    (about 3 s); production Kafka usually wants larger ones (session 45 s).

    Args:
        bootstrap: Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].
        topic: the events topic.
        dlq_topic: where refused records go (default: `<topic>.dlq`).
        group_id: the ingest consumer group.
        partitions: partitions of the topics Persona creates when they are missing.
        session_timeout_ms: consumer group session timeout.
        heartbeat_interval_ms: consumer group heartbeat interval.
        max_poll_interval_ms: longest time between polls before the member is dropped.
        max_poll_records: most records one poll hands over.
        auto_offset_reset: where a group without committed offsets starts.
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
    """Per-user window bounds and what the consumer accepts.

    Args:
        max_events: events kept per user window (the newest).
        horizon_ms: events older than this before the user's newest event are dropped.
        max_future_ms: an event stamped further ahead of the wall clock is refused.
        max_payload_bytes: larger Kafka values are refused.
        max_id_bytes: longest user or event id (UTF-8 bytes).
        max_props: most properties an event may carry.
        max_value_bytes: longest categorical property value (UTF-8 bytes).
    """

    max_events: int = 256
    horizon_ms: int = 30 * DAY_MS
    max_future_ms: int = DAY_MS
    max_payload_bytes: int = 64 * 1024
    max_id_bytes: int = MAX_ID_BYTES
    max_props: int = 64
    max_value_bytes: int = 1024


@dataclass(frozen=True)
class StoreConfig:
    """The KV store and its credentials.

    The credentials are read where the connection is made (`services/store/client.py`,
    from the environment or a mounted file), so they never travel inside a config object
    that may be logged; they are listed here so the settings tree validates and shows them.

    Args:
        redis: redis://HOST:PORT (rediss:// for TLS) of a single node or any node of a cluster.
        username: ACL user (default: the `default` user).
        password: the password itself (prefer password_file).
        password_file: a file holding the password (a mounted secret).
    """

    redis: str = "redis://127.0.0.1:6379"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None


@dataclass(frozen=True)
class KafkaSecurityConfig:
    """Kafka TLS / SASL, read where the clients are made (`services/common/kafka.py`).

    Args:
        security_protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (unset: PLAINTEXT).
        sasl_mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
        sasl_username: SASL user.
        sasl_password: SASL password itself (prefer sasl_password_file).
        sasl_password_file: a file holding the SASL password.
        ssl_cafile: PEM CA bundle for the brokers' certificates.
        ssl_certfile: PEM client certificate (mTLS).
        ssl_keyfile: PEM client key (mTLS).
    """

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None


@dataclass(frozen=True)
class ProcessConfig:
    """What every `persona` process has.

    Args:
        models: the model registry folder.
        metrics_port: serve Prometheus /metrics on this port (0: no endpoint).
        metrics_host: the address /metrics listens on: every interface by default (a
            cluster's Prometheus scrapes the pod's address); the embedded stack (`persona
            demo`) sets 127.0.0.1.
    """

    models: Path = Path("models")
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"


@dataclass(frozen=True)
class TelemetryConfig:
    """Logs and traces.

    Args:
        log_format: "text" (one readable line) or "json" (one JSON object a line, with the
            request id and trace id when there is one).
        log_level: DEBUG, INFO, WARNING or ERROR.
        traces: "off" (default), "otlp" (export spans to otlp_endpoint over gRPC) or
            "console" (print spans to stderr).
        otlp_endpoint: OTLP/gRPC collector address for traces="otlp".
        service_name: the `service.name` resource of the spans (default: persona-<command>).
    """

    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    traces: Literal["off", "otlp", "console"] = "off"
    otlp_endpoint: str = "http://127.0.0.1:4317"
    service_name: str | None = None


def setting_flag(
    p: argparse.ArgumentParser, path: str, *names: str, **kwargs: Any
) -> argparse.Action:
    """A flag that sets the setting at `path` ("section.field"); the tree validates it.

    The flag defaults to None (not given); after parsing, `services.cli.parse` puts the
    effective value (flag, else `PERSONA_*`, else default) in its place, typed. Its help
    gets the default and the variable's name from the tree. `const=` makes a switch that
    sets that value (`--float16` -> refresh.dtype = "float16").
    """
    if "const" in kwargs:
        kwargs.setdefault("action", "store_const")
    kwargs.setdefault("help", path)  # the tree's help formatter puts the setting's own text here
    action = p.add_argument(*names, default=None, **kwargs)
    action.setting = path  # type: ignore[attr-defined]
    declared = dict(p.get_default("setting_flags") or {})
    declared[action.dest] = (path, "/".join(action.option_strings))
    p.set_defaults(setting_flags=declared)
    return action


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """--bootstrap / --redis (and topic) for every command that talks to the stack."""
    setting_flag(p, "kafka.bootstrap", "--bootstrap", metavar="HOST:PORT")
    setting_flag(p, "store.redis", "--redis", metavar="URL")
    setting_flag(p, "kafka.topic", "--topic")


def add_models_arg(p: argparse.ArgumentParser) -> None:
    setting_flag(p, "process.models", "--models", type=Path, metavar="DIR")


def add_metrics_arg(p: argparse.ArgumentParser) -> None:
    setting_flag(p, "process.metrics_port", "--metrics-port", metavar="PORT")
    setting_flag(
        p, "process.metrics_host", "--metrics-host", metavar="ADDR", help="/metrics listen address"
    )
