"""TLS, mutual TLS and the bearer-token interceptor, each with a refused client.

Certificates are made per test session with the `openssl` CLI (the `cryptography` package
is not installed here): a CA, a server certificate for localhost, a client certificate it
signed, and a client certificate of another CA that the server must refuse.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc

from services.index.holder import IndexHolder
from services.serving.config import TLSConfig
from services.store.vectors import VectorStore
from tests.serving.support import V1, Running
from tests.tls_support import channel_creds

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]


def model_info(
    stub: service_pb2_grpc.UserEmbeddingServiceStub, **kw: object
) -> pb.GetModelInfoResponse:
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store_and_index(
    vstore: VectorStore, holder: IndexHolder, users: object
) -> tuple[VectorStore, IndexHolder]:
    return vstore, holder


def test_tls_serves_trusting_clients_and_refuses_plaintext(
    serve: Callable[..., Running], store_and_index: tuple, tls_certs: Path
) -> None:
    tls = TLSConfig(tls_certs / "server.pem", tls_certs / "server.key")
    r = serve(*store_and_index, channel_creds=channel_creds(tls_certs), tls=tls)
    assert model_info(r.stub).active_version == V1
    with grpc.insecure_channel(f"localhost:{r.server.port}") as plain:
        with pytest.raises(grpc.RpcError) as ei:
            model_info(service_pb2_grpc.UserEmbeddingServiceStub(plain))
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    # a client that does not trust the server's CA refuses the server
    with grpc.secure_channel(
        f"localhost:{r.server.port}", channel_creds(tls_certs, ca="rogue")
    ) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            model_info(service_pb2_grpc.UserEmbeddingServiceStub(ch))
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_clients_without_a_trusted_certificate(
    serve: Callable[..., Running], store_and_index: tuple, tls_certs: Path
) -> None:
    tls = TLSConfig(
        tls_certs / "server.pem", tls_certs / "server.key", client_ca=tls_certs / "ca.pem"
    )
    r = serve(*store_and_index, channel_creds=channel_creds(tls_certs, "client"), tls=tls)
    assert model_info(r.stub).active_version == V1
    for who in (None, "intruder"):
        with grpc.secure_channel(f"localhost:{r.server.port}", channel_creds(tls_certs, who)) as ch:
            with pytest.raises(grpc.RpcError) as ei:
                model_info(service_pb2_grpc.UserEmbeddingServiceStub(ch))
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE, who


def test_bearer_token_refuses_missing_and_wrong_tokens(
    serve: Callable[..., Running], store_and_index: tuple
) -> None:
    r = serve(*store_and_index, auth_token="s3cret-token")
    good = (("authorization", "Bearer s3cret-token"),)
    assert model_info(r.stub, metadata=good).active_version == V1
    for md in [(), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)]:
        with pytest.raises(grpc.RpcError) as ei:
            model_info(r.stub, metadata=md)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "s3cret" not in ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:
        r.stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=["u1"]), timeout=5)
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # health probes send no metadata and stay allowed
    health = health_pb2_grpc.HealthStub(r.channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert r.sample(
        "persona_serving_requests_total",
        service="persona.v1.UserEmbeddingService", method="GetModelInfo", code="UNAUTHENTICATED",
    ) == 3  # fmt: skip


def test_a_refused_calls_body_is_not_parsed() -> None:
    """The refusal's handler has a deserializer of its own that reads nothing: 4 calls of
    15 MB without a token had cost 360 MB of parsing before being refused."""
    from types import SimpleNamespace

    from services.serving.interceptors import AuthInterceptor

    parsed: list[bytes] = []

    def parse(body: bytes) -> bytes:
        parsed.append(body)
        return body

    handler = grpc.unary_unary_rpc_method_handler(lambda q, c: q, request_deserializer=parse)
    auth = AuthInterceptor([("", "s3cret-token")])
    call = SimpleNamespace(method="/persona.v1.UserEmbeddingService/GetEmbeddings",
                           invocation_metadata=(("authorization", "Bearer wrong"),))  # fmt: skip
    refused = auth.intercept_service(lambda _d: handler, call)  # type: ignore[arg-type]
    assert refused is not None and refused is not handler
    refused.request_deserializer(b"x" * 1000)
    assert parsed == []
    call.invocation_metadata = (("authorization", "Bearer s3cret-token"),)
    assert auth.intercept_service(lambda _d: handler, call) is handler  # type: ignore[arg-type]
