"""Logs and traces, set up the same way by every `persona` process.

Logs go to stderr: one readable line per record (`PERSONA_LOG_FORMAT=text`, the default), or
one JSON object per line (`json`) with `ts`, `level`, `logger`, `message`, and, when the
record was written inside a gRPC call or a span, `request_id`, `trace_id` and `span_id`.
The serving side sets the request id (`REQUEST_ID`) for the length of each call: the
caller's `x-request-id` metadata, else a new one, sent back in the response's metadata.

Traces are off by default (the OpenTelemetry API's no-op provider: nothing is recorded,
nothing is sent). `PERSONA_TRACES=otlp` exports spans over OTLP/gRPC to
`PERSONA_OTLP_ENDPOINT`, `console` prints them to stderr. Where
they come from:
- gRPC: every call to `persona serve` is a server span, joined to the caller's trace when
  the call carries `traceparent` metadata (`opentelemetry-instrumentation-grpc`);
- Kafka: `persona produce` puts the W3C `traceparent` of its span in each record's headers;
  `persona ingest` opens a span per polled batch linked to the records' traces; `persona
  refresh` opens a span per batch and puts its `traceparent` in each update-log record, so
  what reads the update log can join the trace. (Between ingest and refresh the work passes
  through the store's dirty marks, which carry no trace context: a refresh batch starts a
  trace of its own.)
Components take a `tracer` argument (None: no spans), so tests hand them one built on an
in-memory exporter.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract, inject

from services.config import TelemetryConfig

REQUEST_ID: ContextVar[str | None] = ContextVar("persona_request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the request and trace ids when there are some."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = REQUEST_ID.get()
        if rid is not None:
            out["request_id"] = rid
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(cfg: TelemetryConfig, stream: Any = None) -> logging.Handler:
    """The root logger writes to stderr in `cfg.log_format` at `cfg.log_level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if cfg.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(cfg.log_level)
    return handler


def setup_tracing(cfg: TelemetryConfig, service: str) -> Any:
    """The process's tracer provider when traces are on (None when off). It is also made the
    OpenTelemetry global, which the gRPC instrumentation and `tracer()` use."""
    if cfg.traces == "off":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter: Any
    if cfg.traces == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint, insecure=True)
    provider = TracerProvider(
        resource=Resource.create({"service.name": cfg.service_name or service})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # flush what is batched
    return provider


def tracer(provider: Any = None) -> trace.Tracer | None:
    """Persona's tracer from `provider`, else from the global one when it records; None when
    traces are off, so hot paths skip their span work with one `is None` test."""
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
    return trace.get_tracer("persona", tracer_provider=provider)


def kafka_headers() -> list[tuple[str, bytes]]:
    """The current span's context as Kafka record headers (W3C `traceparent`)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def links_from_headers(all_headers: Iterable[Any]) -> list[trace.Link]:
    """One span link per distinct trace context found in the records' headers (lists of
    (key, value) pairs, as both Kafka clients give them; None for none)."""
    seen: set[tuple[int, int]] = set()
    links = []
    for headers in all_headers:
        if not headers:
            continue
        carrier = {
            k: v.decode("latin-1") if isinstance(v, bytes) else str(v)
            for k, v in headers
            if k in ("traceparent", "tracestate")
        }
        if "traceparent" not in carrier:
            continue
        ctx = trace.get_current_span(extract(carrier)).get_span_context()
        key = (ctx.trace_id, ctx.span_id)
        if ctx.is_valid and key not in seen:
            seen.add(key)
            links.append(trace.Link(ctx))
    return links
