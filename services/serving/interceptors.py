"""Server interceptors: per-method metrics, request ids and a bearer-token check. Each is
handed what it needs (the metrics object, the token); none holds global state.

Order matters: `[tracing, MetricsInterceptor, RequestIdInterceptor, AuthInterceptor]` puts the
span (when traces are on) and the metrics outermost, so refused calls are traced and counted
(code UNAUTHENTICATED) as well, and carry a request id.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import trace

from services.serving.metrics import ServingMetrics
from services.telemetry import REQUEST_ID

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _split(method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or "unknown"


def _rewrap(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Any], Any], parse: bool = True
) -> grpc.RpcMethodHandler:
    """The same kind of handler with its behaviour function passed through `wrap`; with
    `parse` False its requests are not deserialized (a refused call's body is never
    parsed, whatever its size)."""
    h: Any = handler
    kinds = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attr, make = kinds[(bool(h.request_streaming), bool(h.response_streaming))]
    return make(
        wrap(getattr(h, attr)),
        request_deserializer=h.request_deserializer if parse else _unparsed,
        response_serializer=h.response_serializer,
    )


_UNPARSED = object()  # what a refused call's handler gets (grpc takes None for a failed parse)


def _unparsed(_body: bytes) -> object:
    return _UNPARSED


class _PerMethod:
    """Wrapped handlers kept per method, so that a call costs one dict lookup, not a new
    handler: a method's handler is the same object call after call, and when it is not
    (another interceptor made it), the new one is wrapped and kept instead."""

    def __init__(self, wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]):
        self._wrap = wrap
        self._kept: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kept = self._kept.get(method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        wrapped = self._wrap(handler, method)
        self._kept[method] = (handler, wrapped)  # methods are the registered ones: bounded
        return wrapped


class _UnaryInterceptor(grpc.ServerInterceptor):
    """Wraps every unary method's handler once (`_PerMethod`); streaming calls (health
    Watch, reflection) pass through as they are."""

    def __init__(self, wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]):
        self._wrapped = _PerMethod(wrap)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        return self._wrapped.get(handler, handler_call_details.method)


class MetricsInterceptor(_UnaryInterceptor):
    """Counts unary calls by (service, method, code) and times them. Streaming calls
    (health Watch, reflection) pass through untimed."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self._m = metrics
        super().__init__(self._time)

    def _time(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        service, method = _split(full_method)
        latency = self._m.latency.labels(service, method)
        requests = self._m.requests
        by_code: dict[grpc.StatusCode, Any] = {}

        def count(code: grpc.StatusCode) -> None:
            counter = by_code.get(code)
            if counter is None:
                counter = by_code[code] = requests.labels(service, method, code.name)
            counter.inc()

        def wrap(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
            def timed(request: Any, context: grpc.ServicerContext) -> Any:
                t0 = time.perf_counter()
                code = grpc.StatusCode.UNKNOWN
                try:
                    response = behavior(request, context)
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    latency.observe(time.perf_counter() - t0)
                    count(code)

            return timed

        return _rewrap(handler, wrap)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without the right `authorization: Bearer <token>` with UNAUTHENTICATED.

    `rules`: (method prefix, token) pairs, the first prefix that matches decides; a token of
    None lets the call through. Health checks are always let through: probes (kubelet,
    grpc_health_probe) send no metadata. `persona serve` passes the AdminService's prefix
    with the admin token, then "" with the serving token, so a ranker's token never
    reaches an operator call.
    """

    def __init__(self, rules: list[tuple[str, str | None]]) -> None:
        if any(t is not None and not t.strip() for _, t in rules):
            raise ValueError("auth token is empty")
        self._rules = [(HEALTH_PREFIX, None)] + [
            (p, None if t is None else f"Bearer {t}".encode()) for p, t in rules
        ]
        self._refused = _PerMethod(lambda handler, _method: _rewrap(handler, _deny, parse=False))

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        details: Any = handler_call_details
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        expected = next((t for p, t in self._rules if details.method.startswith(p)), None)
        if expected is None:
            return handler
        got = next((v for k, v in details.invocation_metadata or () if k == "authorization"), "")
        if isinstance(got, str) and hmac.compare_digest(got.encode(), expected):
            return handler
        return self._refused.get(handler, details.method)


def _deny(_behavior: Any) -> Any:
    def refused(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    return refused


REQUEST_ID_KEY = "x-request-id"


class RequestIdInterceptor(_UnaryInterceptor):
    """Gives every unary call a request id: the caller's `x-request-id` metadata (up to 64
    characters), else a new one. For the length of the call it is `telemetry.REQUEST_ID`
    (JSON log lines carry it) and an attribute of the call's span when traces are on; the
    caller gets it back in the response's initial metadata."""

    def __init__(self) -> None:
        super().__init__(lambda handler, _method: _rewrap(handler, _with_request_id))


def _with_request_id(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        got = next((v for k, v in context.invocation_metadata() or () if k == REQUEST_ID_KEY), "")
        rid = got[:64] if isinstance(got, str) and got else uuid.uuid4().hex[:16]
        token = REQUEST_ID.set(rid)
        try:
            context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attribute("persona.request_id", rid)
            return behavior(request, context)
        finally:
            REQUEST_ID.reset(token)

    return call
