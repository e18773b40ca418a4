"""How a client reaches Persona: one frozen config, and the gRPC service config made from it.

The retry policy and load balancing live in the gRPC service config (`service_config`), so
the gRPC library itself retries a call that failed with UNAVAILABLE (a replica restarting,
a connection reset) with exponential backoff, within the call's deadline, and throttles
retries when most calls fail. Every persona.v1 call is a read, so a retry is always safe.
RESOURCE_EXHAUSTED (the server shedding load) is not retried: retrying would add load to
an overloaded server.

The default deadline is not the service config's `timeout`: grpcio (seen with 1.85.1 here;
grpc/grpc issues 34547 and 40633) measures that from the wrong start, so a call can fail
with DEADLINE_EXCEEDED at once, before any attempt. The client passes `timeout_s` with
every call instead (tests/clients/test_python_client.py: the default deadline applies, and
the service config carries no timeout). Here the misfired deadline was grpc's clock at
start plus the timeout, so any call made later than `timeout` after start failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

SERVICE = "persona.v1.UserEmbeddingService"
HEALTH_SERVICE = SERVICE  # readiness: health says SERVING once the lookalike index is caught up
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the server's limit, each way


@dataclass(frozen=True, slots=True)
class TLS:
    """Server-authenticated TLS; with `cert_chain` and `private_key`, mutual TLS. PEM bytes;
    `root_certificates` None = the system roots."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    cert_chain: bytes | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where and how a PersonaClient calls.

    Args:
        target: a gRPC target, e.g. "persona-serve:50051", or "dns:///persona-serve:50051"
            so that every address DNS returns is used (with `load_balancing="round_robin"`
            calls spread over the replicas; a Kubernetes headless Service gives one
            address per pod).
        timeout_s: the deadline of a call that sets none; retries happen inside it (sent
            with each call, not through the service config: see the module docstring).
        max_attempts: attempts per call on UNAVAILABLE, the first included (1 = no retry;
            gRPC caps it at 5).
        initial_backoff_s, max_backoff_s: the retry backoff (randomised, doubled per try).
        load_balancing: "pick_first" (one connection) or "round_robin" (one per address).
        token: sent as `authorization: Bearer <token>` on every call (the server's
            PERSONA_AUTH_TOKEN); None sends nothing.
        tls: None for plaintext.
    """

    target: str
    timeout_s: float = 1.0
    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 0.5
    load_balancing: Literal["pick_first", "round_robin"] = "pick_first"
    token: str | None = field(default=None, repr=False)
    tls: TLS | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts {self.max_attempts}: 1..5 (gRPC caps retries at 5)")
        if self.timeout_s <= 0 or self.initial_backoff_s <= 0 or self.max_backoff_s <= 0:
            raise ValueError("timeout_s and the backoffs must be positive")


def service_config(cfg: ClientConfig) -> str:
    """The gRPC service config JSON of `cfg` (the format:
    https://github.com/grpc/grpc/blob/master/doc/service_config.md).

    >>> import json
    >>> c = json.loads(service_config(ClientConfig("localhost:50051")))
    >>> c["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"]
    ['UNAVAILABLE']
    """
    method: dict[str, object] = {"name": [{"service": SERVICE}]}
    if cfg.max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": cfg.max_attempts,
            "initialBackoff": f"{cfg.initial_backoff_s}s",
            "maxBackoff": f"{cfg.max_backoff_s}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps(
        {
            "loadBalancingConfig": [{cfg.load_balancing: {}}],
            "methodConfig": [method],
            # A token per call, 1/10 back per success: retries stop while most calls fail.
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )


def channel_options(cfg: ClientConfig) -> list[tuple[str, object]]:
    """gRPC channel options: the service config, retries on, the server's message limits.
    (The default deadline goes with each call: `PersonaClient`.)"""
    return [
        ("grpc.service_config", service_config(cfg)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
