"""The grpc.Server: the servicer, health checking, reflection, optional TLS / mTLS, and a
graceful stop.

Example::

    server = ServingServer(ServeConfig(port=0), store, holder, serving_metrics(registry))
    server.start()            # health SERVING
    ...
    server.stop()             # health NOT_SERVING, drain, then in-flight calls get grace_s
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from persona.v1 import service_pb2

from services.serving.admin import AdminServicer
from services.serving.config import Limits, ServeConfig, TLSConfig
from services.serving.handlers import add_service
from services.serving.interceptors import (
    AuthInterceptor,
    MetricsInterceptor,
    RequestIdInterceptor,
)
from services.serving.metrics import ServingMetrics
from services.serving.ports import IndexSource, VectorReader
from services.serving.readiness import Readiness, StoreWatch
from services.serving.served_log import ServedLog
from services.serving.servicer import UserEmbeddingServicer
from services.serving.shortterm import HeadSource
from services.telemetry import tracer

log = logging.getLogger(__name__)

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["UserEmbeddingService"].full_name
ADMIN_SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the largest answer sent (and a client may take)
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def receive_limit(limits: Limits) -> int:
    """The largest request body the server parses: twice its largest valid one (an id list
    of max(max_batch, max_seeds) ids of max_id_bytes, 3 bytes of framing each) plus 64 KiB
    for the rest, and at least 1 MiB. A larger body is refused (RESOURCE_EXHAUSTED) before
    it is parsed: 16 MiB of one-byte ids took ~90 MB to parse, before any check ran."""
    ids = max(limits.max_batch, limits.max_seeds) * (limits.max_id_bytes + 3)
    return max(1 << 20, 2 * ids + (64 << 10))


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """TLS credentials; with `client_ca`, clients must present a certificate it signed."""
    ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


class ServingServer:
    def __init__(
        self,
        config: ServeConfig,
        store: VectorReader,
        index: IndexSource,
        metrics: ServingMetrics,
        tracer_provider: Any = None,
        admin: AdminServicer | None = None,
        served_log: ServedLog | None = None,
        heads: HeadSource | None = None,
    ) -> None:
        """`heads`: the versions' short-term heads (`shortterm.RegistryHeads`; None: every
        version served nearline). `tracer_provider`: a server span per call, joined to the
        caller's trace (None: the OpenTelemetry global, which records nothing unless
        `PERSONA_TRACES` set one up).
        `admin`: the AdminService (ForgetUsers), served beside, behind the same interceptors
        (None: not served); `stop` closes it. `served_log`: a sample of GetEmbeddings answers
        to Kafka (None: none); `start` starts its thread, `stop` flushes and stops it."""
        self.config = config
        self.admin = admin
        self.served_log = served_log
        interceptors: list[grpc.ServerInterceptor] = [
            MetricsInterceptor(metrics),
            RequestIdInterceptor(),
        ]
        if tracer_provider is not None or tracer() is not None:
            from opentelemetry.instrumentation.grpc import server_interceptor  # 0.2 s: only then

            interceptors.insert(0, server_interceptor(tracer_provider=tracer_provider))
        for name, token in (("auth_token", config.auth_token), ("admin_token", config.admin_token)):
            if token is not None and not token.strip():
                raise ValueError(f"{name} is empty: give a token, or None for no check")
        if admin is not None and config.admin_token is None:
            raise ValueError("the AdminService needs its own token (ServeConfig.admin_token)")
        if config.auth_token is not None or config.admin_token is not None:
            rules = [(f"/{ADMIN_SERVICE_NAME}/", config.admin_token), ("", config.auth_token)]
            interceptors.append(AuthInterceptor(rules))
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc"),
            interceptors=interceptors,
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", receive_limit(config.limits)),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1 if config.processes > 1 else 0),  # processes.py
            ],
        )
        self.servicer = UserEmbeddingServicer(config, store, index, metrics, served_log, heads)
        bind_index_gauge(metrics, index)
        add_service(
            self.servicer, self._server, "UserEmbeddingService"
        )  # bad bodies: INVALID_ARGUMENT
        self.health = health.HealthServicer()
        self.readiness = Readiness(self.health, SERVICE_NAME)
        metrics.store_reachable.set(1)
        self._store_watch = (
            StoreWatch(
                store.active_version,
                lambda ok: self.readiness.update(store_ok=ok),
                config.store_probe_s,
                config.store_probe_failures,
                on_probe=lambda ok: metrics.store_reachable.set(1 if ok else 0),
            )
            if config.store_probe_s > 0
            else None
        )
        names = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if admin is not None:
            add_service(admin, self._server, "AdminService")
            names.append(ADMIN_SERVICE_NAME)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(tuple(names), self._server)
        address = f"{config.host}:{config.port}"
        if config.tls is not None:
            self.port = self._server.add_secure_port(address, server_credentials(config.tls))
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        self._stopped = False
        self._ready_thread: threading.Thread | None = None

    def start(self, ready: Callable[[float], bool] | None = None) -> None:
        """Start answering calls. Health says SERVING at once, or, with `ready` (called with
        a timeout in seconds, True once the replica may take traffic: e.g.
        `IndexHolder.wait_ready`), the Persona service (readiness) says NOT_SERVING until
        `ready` says so, checked on a thread so that start does not wait; the server as a
        whole ("", liveness) says SERVING at once, so that a long index build is not taken
        for a hung process. A stop before then keeps it NOT_SERVING. Readiness also goes
        NOT_SERVING while the store is unreachable (`readiness.py`), and back after."""
        if self.served_log is not None:
            self.served_log.start()
        self._server.start()
        self.readiness.update(index_ready=ready is None)
        if self._store_watch is not None:
            self._store_watch.start()
        if ready is not None:
            self._ready_thread = threading.Thread(
                target=self._serve_when, args=(ready,), name="health-ready", daemon=True
            )
            self._ready_thread.start()
        log.info(
            "serving %s on %s:%d (%s%s)",
            SERVICE_NAME,
            self.config.host,
            self.port,
            "mTLS" if self.config.tls and self.config.tls.client_ca else
            "TLS" if self.config.tls else "plaintext",
            ", bearer token" if self.config.auth_token else "",
        )  # fmt: skip
        if self.config.auth_token is None and self.config.host not in LOOPBACK:
            log.warning(
                "no bearer token: any client that reaches %s:%d is served (set"
                " PERSONA_AUTH_TOKEN or --auth-token-file, or listen on 127.0.0.1)",
                self.config.host, self.port,
            )  # fmt: skip

    def _serve_when(self, ready: Callable[[float], bool]) -> None:
        while not self._stopped:
            if ready(0.5):
                if not self._stopped:  # (health ignores it after a stop began, too)
                    self.readiness.update(index_ready=True)
                    log.info("index ready")
                return

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop, in order: health goes NOT_SERVING for every service (and stays so);
        serving continues for `drain_s` so load balancers take the replica out; then new
        calls are refused and in-flight ones get `grace_s` to finish; then the store-call
        threads are released and the served log sends what it holds. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.grace_s if grace_s is None else grace_s
        self.readiness.stop()
        if self._store_watch is not None:
            self._store_watch.stop()
        self.health.enter_graceful_shutdown()
        if self.config.drain_s > 0:
            time.sleep(self.config.drain_s)
        self._server.stop(grace).wait()
        if self._ready_thread is not None:
            self._ready_thread.join(1.0)  # wakes every 0.5 s to see the stop
        self.servicer.close()
        if self.served_log is not None:
            self.served_log.close()
        if self.admin is not None:
            self.admin.close()
        log.info("server stopped")

    def wait(self, timeout_s: float | None = None) -> bool:
        return bool(self._server.wait_for_termination(timeout_s))

    def __enter__(self) -> ServingServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind_index_gauge(metrics: ServingMetrics, index: IndexSource) -> None:
    """`persona_serving_index_size` reads the served index's size at scrape time."""

    def size() -> float:
        served = index.current()
        return float(served.index.size) if served is not None else 0.0

    metrics.index_size.set_function(size)
