"""The settings tree: every `PERSONA_*` variable, its type, default, meaning and flag.

The sections are the components' own frozen configs (`KafkaConfig`, `RefreshConfig`,
`ServeConfig`, `IndexConfig`, ...): their field defaults and types are the only ones written
down, and a field's help is its line in the config's `Args:` docstring. This module adds,
per field, the variable that sets it (`SETTINGS`), and builds the tree once per command:

1. the flags given on the command line (declared with `services.config.setting_flag`),
2. else `PERSONA_<NAME>` from the environment,
3. else the command's default where it differs from the library's (`serve.port`), else the
   config's own default.

pydantic validates every value against the field's type and runs the config's own checks
(`__post_init__`); a bad value is a `SettingsError` whose message is one line naming the
variable or flag. `persona config` prints the effective tree with the source of each value,
secrets masked.
"""

from __future__ import annotations

import json
import os
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from contract import topics
from services.config import (
    KafkaConfig,
    KafkaSecurityConfig,
    ProcessConfig,
    StoreConfig,
    TelemetryConfig,
    WindowConfig,
)
from services.index.config import IndexConfig
from services.refresh.config import RefreshConfig
from services.serving.config import ServeConfig

PREFIX = "PERSONA_"
UNSET = object()


class SettingsError(ValueError):
    """A setting with a value its type or its component refuses; the message is one line."""


@dataclass(frozen=True)
class Setting:
    """One leaf of the tree.

    Args:
        path: "section.field" (or "section.sub.field") in `Settings`.
        env: the variable's name without the PERSONA_ prefix.
        secret: masked by `persona config`.
        none_if: raw values that mean None ("0" for "no limit", "" for "unset").
        unit_ms: the variable and the flag are in milliseconds, the field in seconds.
        default: the commands' default where it differs from the config's own (UNSET: none).
        help: where the config's `Args:` docstring has no line for the field.
    """

    path: str
    env: str
    secret: bool = False
    none_if: tuple[str, ...] = ()
    unit_ms: bool = False
    default: Any = UNSET
    help: str = ""

    @property
    def var(self) -> str:
        return PREFIX + self.env

    def convert(self, raw: Any) -> Any:
        """Raw text (or a flag's value) -> what pydantic validates."""
        if isinstance(raw, str) and raw.strip() in self.none_if:
            return None
        if isinstance(raw, str) and raw.lstrip().startswith("["):  # a list: JSON, "[10, 50]"
            try:
                return json.loads(raw)
            except ValueError:
                return raw  # pydantic names the bad value
        if self.unit_ms:
            try:
                return float(raw) / 1000.0
            except (TypeError, ValueError):
                return raw  # pydantic names the bad value
        return raw


S = Setting
_MANY = ("", "0")
SETTINGS: tuple[Setting, ...] = (
    S("process.models", "MODELS"),
    S("process.metrics_port", "METRICS_PORT"),
    S("process.metrics_host", "METRICS_HOST"),
    S("telemetry.log_format", "LOG_FORMAT"),
    S("telemetry.log_level", "LOG_LEVEL"),
    S("telemetry.traces", "TRACES"),
    S("telemetry.otlp_endpoint", "OTLP_ENDPOINT"),
    S("telemetry.service_name", "SERVICE_NAME", none_if=("",)),
    S("kafka.bootstrap", "BOOTSTRAP"),
    S("kafka.topic", "TOPIC"),
    S("kafka.dlq_topic", "DLQ_TOPIC"),
    S("kafka.group_id", "GROUP"),
    S("kafka.partitions", "PARTITIONS"),
    S("kafka.session_timeout_ms", "SESSION_TIMEOUT_MS"),
    S("kafka.heartbeat_interval_ms", "HEARTBEAT_INTERVAL_MS"),
    S("kafka.max_poll_interval_ms", "MAX_POLL_INTERVAL_MS"),
    S("kafka.max_poll_records", "MAX_POLL_RECORDS"),
    S("kafka.auto_offset_reset", "AUTO_OFFSET_RESET"),
    *(
        S(
            f"kafka_security.{f.name}",
            f"KAFKA_{f.name.upper()}",
            secret="password" in f.name,
            none_if=("",),
        )
        for f in fields(KafkaSecurityConfig)
    ),
    S("store.redis", "REDIS"),
    S("store.username", "REDIS_USERNAME", none_if=("",)),
    S("store.password", "REDIS_PASSWORD", secret=True, none_if=("",)),
    S("store.password_file", "REDIS_PASSWORD_FILE", none_if=("",)),
    S("window.max_events", "WINDOW_EVENTS"),
    S("window.horizon_ms", "WINDOW_HORIZON_MS"),
    S("window.max_future_ms", "MAX_FUTURE_MS"),
    S("window.max_payload_bytes", "MAX_PAYLOAD_BYTES"),
    S("window.max_id_bytes", "MAX_ID_BYTES"),
    S("window.max_props", "MAX_PROPS"),
    S("window.max_value_bytes", "MAX_VALUE_BYTES"),
    S("refresh.interval_s", "REFRESH_INTERVAL_S"),
    S("refresh.drain_threshold", "REFRESH_DRAIN_THRESHOLD"),
    S("refresh.check_every_s", "REFRESH_CHECK_EVERY_S"),
    S("refresh.batch_size", "REFRESH_BATCH"),
    S("refresh.candidates_per_bucket", "REFRESH_CANDIDATES_PER_BUCKET"),
    S("refresh.history", "VECTOR_HISTORY"),
    S("refresh.ttl_s", "VECTOR_TTL_S", none_if=_MANY),
    S("refresh.dtype", "VECTOR_DTYPE"),
    S("refresh.embeddings_topic", "EMBEDDINGS_TOPIC"),
    S("refresh.device", "DEVICE", none_if=("",)),
    S("refresh.compile", "ENCODER_COMPILE"),
    S("refresh.bf16", "ENCODER_BF16"),
    S("refresh.encode_streams", "ENCODER_STREAMS"),
    S("refresh.backfill_batch", "REFRESH_BACKFILL_BATCH"),
    S("refresh.follow_registry", "REFRESH_FOLLOW_REGISTRY"),
    S("refresh.max_publish_wait_s", "REFRESH_MAX_PUBLISH_WAIT_S"),
    S("refresh.expire_after_days", "EXPIRE_AFTER_DAYS", none_if=_MANY),
    S("refresh.expire_every_s", "EXPIRE_EVERY_S"),
    S("refresh.share_group", "REFRESH_GROUP", none_if=("",)),
    S("refresh.share_topic", "REFRESH_SHARES_TOPIC"),
    S("refresh.share_ranges", "REFRESH_SHARE_RANGES"),
    S("refresh.share_session_timeout_ms", "REFRESH_SESSION_TIMEOUT_MS"),
    S("refresh.drift", "REFRESH_DRIFT"),
    S("refresh.audiences", "REFRESH_AUDIENCES"),
    S("refresh.rescore_after_s", "REFRESH_RESCORE_AFTER_S", none_if=_MANY),
    S("refresh.rescore_until_s", "REFRESH_RESCORE_UNTIL_S"),
    S("serve.host", "SERVE_HOST"),
    S("serve.port", "SERVE_PORT", default=50051),
    S("serve.dim", "DIM", default=0),
    S("serve.store_timeout_s", "STORE_TIMEOUT_MS", unit_ms=True),
    S("serve.deadline_margin_s", "DEADLINE_MARGIN_MS", unit_ms=True),
    S("serve.version_cache_s", "VERSION_CACHE_S"),
    S("serve.workers", "SERVE_WORKERS"),
    S("serve.store_workers", "SERVE_STORE_WORKERS"),
    S("serve.max_concurrent_rpcs", "MAX_CONCURRENT_RPCS", none_if=_MANY),
    S("serve.grace_s", "GRACE_S"),
    S("serve.drain_s", "DRAIN_S"),
    S("serve.processes", "SERVE_PROCESSES"),
    # "" is kept (not None): `persona serve` refuses an empty token rather than serve openly
    S("serve.auth_token", "AUTH_TOKEN", secret=True),
    S("serve.admin_token", "ADMIN_TOKEN", secret=True),
    S("serve.limits.max_batch", "MAX_BATCH"),
    S("serve.limits.max_history", "MAX_HISTORY"),
    S("serve.limits.max_k", "MAX_K"),
    S("serve.limits.max_seeds", "MAX_SEEDS"),
    S("serve.limits.max_id_bytes", "SERVE_MAX_ID_BYTES"),
    S("serve.served_log.rate", "SERVED_LOG_RATE"),
    S("serve.served_log.topic", "SERVED_TOPIC"),
    S("serve.served_log.queue", "SERVED_LOG_QUEUE"),
    # The lookalike index: every IndexConfig field but dim (the served dimension, serve.dim);
    # an empty value is None (where the field takes None: "choose it", else an error).
    *(
        S(
            f"index.{f.name}",
            f"INDEX_{f.name.upper()}",
            none_if=("",),
            help="most IVF lists, whatever ivf_nlist says" if f.name == "ivf_nlist_max" else "",
        )
        for f in fields(IndexConfig)
        if f.name != "dim"
    ),
)
BY_PATH = {s.path: s for s in SETTINGS}


class _Env(PydanticBaseSettingsSource):
    """The `PERSONA_*` variables of `SETTINGS`, as a nested dict (unset ones left out)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ builds the whole dict at once

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in SETTINGS:
            if s.var in os.environ:
                _put(out, s.path, s.convert(os.environ[s.var]))
        return out


class _CommandDefaults(PydanticBaseSettingsSource):
    """`Setting.default`: where the commands' default differs from the library's."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in SETTINGS:
            if s.default is not UNSET:
                _put(out, s.path, s.default)
        return out


class Settings(BaseSettings):
    """The whole tree. Each section is the config its component receives."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    process: ProcessConfig = Field(default_factory=ProcessConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    kafka_security: KafkaSecurityConfig = Field(default_factory=KafkaSecurityConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    refresh: RefreshConfig = Field(default_factory=RefreshConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: the flags (init kwargs), the environment, the commands' defaults.
        return init_settings, _Env(settings_cls), _CommandDefaults(settings_cls)


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def get(settings: Any, path: str) -> Any:
    for key in path.split("."):
        settings = getattr(settings, key)
    return settings


def load(
    flags: Mapping[str, Any] | None = None, flag_names: Mapping[str, str] | None = None
) -> Settings:
    """The tree from the flags given ({path: raw value}), the environment and the defaults.
    `flag_names` ({path: "--flag"}) lets an error name the flag that gave a bad value.

    Raises:
        SettingsError: a value its type or its component refuses (one line, naming it).
    """
    flags = dict(flags or {})
    given: dict[str, Any] = {}
    for path, raw in flags.items():
        _put(given, path, BY_PATH[path].convert(raw))
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc, flags, flag_names or {})) from None
    if "kafka.dlq_topic" not in flags and BY_PATH["kafka.dlq_topic"].var not in os.environ:
        # derived default: the dead-letter topic of the events topic actually used
        kafka = settings.kafka
        if kafka.dlq_topic != topics.dead_letters(kafka.topic):
            from dataclasses import replace

            kafka = replace(kafka, dlq_topic=topics.dead_letters(kafka.topic))
            settings = settings.model_copy(update={"kafka": kafka})
    return settings


def _one_line(exc: ValidationError, flags: Mapping[str, Any], names: Mapping[str, str]) -> str:
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    s = BY_PATH.get(path)
    if s is None:  # a check across fields of a section (its __post_init__)
        return f"settings of {path or 'persona'}: {msg}"
    raw = flags[path] if path in flags else os.environ.get(s.var, "")
    shown = "***" if s.secret else repr(raw)
    where = names.get(path, f"flag for {s.var}") if path in flags else s.var
    return f"{where}={shown}: {msg}"


# --- what the tree says about itself: help, sources, the `persona config` rows ---------------


def _doc_args(cls: type) -> dict[str, str]:
    """{field: first sentence} from a config's `Args:` docstring ("a, b: text" gives both)."""
    doc = cls.__doc__ or ""
    body = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    out: dict[str, str] = {}
    for m in re.finditer(r"^\s{4,8}([a-z_][a-z0-9_, ]*):\s+(.*(?:\n\s{10,}.*)*)", body, re.M):
        text = " ".join(m.group(2).split())
        for name in m.group(1).split(","):
            out[name.strip()] = text
    return out


def _section_class(path: str) -> tuple[type, str]:
    *parents, leaf = path.split(".")
    cls: Any = Settings.model_fields[parents[0]].annotation
    for key in parents[1:]:
        cls = typing.get_type_hints(cls)[key]
    return cls, leaf


def help_text(path: str) -> str:
    if BY_PATH[path].help:
        return BY_PATH[path].help
    cls, leaf = _section_class(path)
    return _doc_args(cls).get(leaf, "")


def library_default(path: str) -> Any:
    cls, leaf = _section_class(path)
    f = {f.name: f for f in fields(cls)}[leaf]
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def default_of(path: str) -> Any:
    s = BY_PATH[path]
    return library_default(path) if s.default is UNSET else s.default


def source_of(path: str, flags: Mapping[str, Any]) -> str:
    s = BY_PATH[path]
    if path in flags:
        return "flag"
    if s.var in os.environ:
        return "env"
    return "default" if s.default is UNSET else "command default"


def shown(path: str, value: Any) -> str:
    if BY_PATH[path].secret:
        return "" if value is None else "***"
    if BY_PATH[path].unit_ms and isinstance(value, int | float):
        return f"{value * 1000:g}"
    return "" if value is None else str(value)


def rows(settings: Settings, flags: Mapping[str, Any] | None = None) -> Iterator[dict[str, str]]:
    """One row per setting: variable, path, effective value (secrets masked), source."""
    flags = flags or {}
    for s in SETTINGS:
        yield {
            "variable": s.var,
            "setting": s.path,
            "value": shown(s.path, get(settings, s.path)),
            "source": source_of(s.path, flags),
            "help": help_text(s.path),
        }
