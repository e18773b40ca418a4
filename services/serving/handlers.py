"""The service's method handlers, built from its descriptor, with a request parser that
cannot fail.

The generated `add_UserEmbeddingServiceServicer_to_server` parses with `FromString`, and a
body that does not parse becomes INTERNAL with a traceback in the log for every call (issue
#18). Here a body that does not parse becomes a `Malformed` marker, and the method answers
it with INVALID_ARGUMENT ("malformed request body: ...") without a log line: a client's
bad bytes are the client's error, not the server's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from persona.v1 import service_pb2


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request body that did not parse as the method's request message."""

    message_type: str
    error: str


def _lenient(parse: Callable[[bytes], Any], message_type: str) -> Callable[[bytes], Any]:
    def deserialize(body: bytes) -> Any:
        try:
            return parse(body)
        except Exception as exc:  # DecodeError, and whatever else a parser may raise
            return Malformed(message_type, f"{type(exc).__name__}: {exc!s:.200}")

    return deserialize


def _refusing_malformed(method: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed request body: not a {request.message_type} ({request.error})",
            )
        return method(request, context)

    return behaviour


def add_service(servicer: object, server: grpc.Server, service: str) -> None:
    """Register every method of `service` (a name in persona/v1/service.proto) on `server`,
    as the generated code does, parsing requests with `_lenient`."""
    desc = service_pb2.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for m in desc.methods:
        if m.client_streaming or m.server_streaming:  # none yet; this file would need them
            raise TypeError(f"{m.full_name} streams: add_service registers unary methods only")
        request = getattr(service_pb2, m.input_type.name)
        response = getattr(service_pb2, m.output_type.name)
        handlers[m.name] = grpc.unary_unary_rpc_method_handler(
            _refusing_malformed(getattr(servicer, m.name)),
            request_deserializer=_lenient(request.FromString, m.input_type.full_name),
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(desc.full_name, handlers),)
    )
    server.add_registered_method_handlers(desc.full_name, handlers)
