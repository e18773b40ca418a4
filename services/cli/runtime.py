"""What every long-running `persona` command sets up the same way: a stop flag raised by
SIGINT/SIGTERM, logging, and an optional Prometheus `/metrics` endpoint."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry

from services.config import ProcessConfig, TelemetryConfig


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM: the handler only sets the flag, the loop drains."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def service_logging(cfg: TelemetryConfig, command: str) -> None:
    """Logs (text or JSON lines, on stderr) and, when asked for, traces, for one command."""
    from services.telemetry import setup_logging, setup_tracing

    setup_logging(cfg)
    setup_tracing(cfg, f"persona-{command}")


@contextmanager
def metrics_endpoint(
    cfg: ProcessConfig, registry: CollectorRegistry
) -> Iterator[tuple[str, int] | None]:
    """Serve `registry` on http://METRICS_HOST:METRICS_PORT/metrics for the block; yields
    the address bound (None: port 0, no endpoint)."""
    if not cfg.metrics_port:
        yield None
        return
    from prometheus_client import start_http_server

    server, _ = start_http_server(cfg.metrics_port, addr=cfg.metrics_host, registry=registry)
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()
