"""The Go front's TLS / mTLS (its listener, as persona serve's; its upstream connection), its
limit on concurrent calls (persona serve's max_concurrent_rpcs), and `-print-settings`.

TLS: certificates made with the openssl CLI (`tls_certs`); a client that trusts the CA is
served a local GetEmbeddings and a forwarded GetModelInfo, a plaintext client and one of
another CA are refused, and under mTLS so are clients without a certificate of the CA. The
limit: a fake upstream (Python grpc) holds a forwarded call until the test releases it, so
the calls refused while it is held are known without timing anything."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persona.v1 import service_pb2 as pb

from services.index.holder import IndexHolder
from services.serving.config import TLSConfig
from services.store.vectors import VectorStore
from tests.front.conftest import Front, plain, scrape, store_address, stub, value
from tests.go_support import run_front
from tests.serving.support import DB, DIM, Running
from tests.tls_support import channel_creds

pytestmark = pytest.mark.integration

NEARLINE = pb.VECTOR_PART_NEARLINE
REQ = pb.GetEmbeddingsRequest(user_ids=["u1", "nobody", "u2"], part=NEARLINE)
LIMIT_MESSAGE = "Concurrent RPC limit exceeded!"  # grpc/_server.py's, as persona serve sends it


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value.code()


def _tls_flags(certs: Path, client_ca: bool = False) -> list[str]:
    out = ["-tls-cert", str(certs / "server.pem"), "-tls-key", str(certs / "server.key")]
    return [*out, "-tls-client-ca", str(certs / "ca.pem")] if client_ca else out


def _served(front: Front, upstream: Running, ch: grpc.Channel) -> None:
    """A GetEmbeddings (answered by the front) and a GetModelInfo (forwarded) over ch, each
    Python's answer."""
    got = plain(stub(ch).GetEmbeddings(REQ, timeout=10))
    assert got == plain(upstream.stub.GetEmbeddings(REQ, timeout=10)) and got.vectors
    info = stub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    want = upstream.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert (info.active_version, info.versions) == (want.active_version, want.versions)
    assert info.active_version


def _model_info(ch: grpc.Channel) -> Callable[[], object]:
    return lambda: stub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)


def test_tls_front_serves_clients_trusting_its_ca(
    start_front: Callable[..., Front], running: Running, vstore: VectorStore, tls_certs: Path
) -> None:
    front = start_front(running.server.port, store_address(vstore), "-db", str(DB),
                        "-dim", str(DIM), *_tls_flags(tls_certs))  # fmt: skip
    assert front.tls == "TLS"
    target = f"localhost:{front.address.rsplit(':', 1)[1]}"
    with grpc.secure_channel(target, channel_creds(tls_certs)) as ch:
        _served(front, running, ch)
    with grpc.insecure_channel(target) as ch:  # plaintext
        assert _code(_model_info(ch)) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(target, channel_creds(tls_certs, ca="rogue")) as ch:
        assert _code(_model_info(ch)) == grpc.StatusCode.UNAVAILABLE
    assert front.counts() == (1, 0)


def test_mtls_front_refuses_clients_without_a_certificate_of_its_ca(
    start_front: Callable[..., Front], running: Running, vstore: VectorStore, tls_certs: Path
) -> None:
    front = start_front(running.server.port, store_address(vstore), "-db", str(DB),
                        "-dim", str(DIM), *_tls_flags(tls_certs, client_ca=True))  # fmt: skip
    assert front.tls == "mTLS"
    target = f"localhost:{front.address.rsplit(':', 1)[1]}"
    for who in (None, "intruder"):
        with grpc.secure_channel(target, channel_creds(tls_certs, who)) as ch:
            assert _code(_model_info(ch)) == grpc.StatusCode.UNAVAILABLE, who
            req = lambda ch=ch: stub(ch).GetEmbeddings(REQ, timeout=10)  # noqa: E731
            assert _code(req) == grpc.StatusCode.UNAVAILABLE, who
    with grpc.secure_channel(target, channel_creds(tls_certs, "client")) as ch:
        _served(front, running, ch)
    assert front.counts() == (1, 0)


@pytest.mark.parametrize("how", ["TLS", "server-name", "mTLS"])
def test_front_dials_a_tls_upstream(
    start_front: Callable[..., Front], serve: Callable[..., Running], vstore: VectorStore,
    holder: IndexHolder, users: object, tls_certs: Path, how: str,
) -> None:  # fmt: skip
    """persona serve with TLS (mTLS: client certificates of the CA): the front verifies it
    against -upstream-tls-ca (for 127.0.0.1, or the name given) and forwards as over
    plaintext; GetEmbeddings forwarded until the dimension is learnt, then local."""
    d = tls_certs
    client_ca = d / "ca.pem" if how == "mTLS" else None
    tls = TLSConfig(d / "server.pem", d / "server.key", client_ca=client_ca)
    upstream = serve(vstore, holder, channel_creds=channel_creds(d, "client"), tls=tls)
    flags = ["-upstream-tls-ca", str(d / "ca.pem")]
    if how == "server-name":
        flags += ["-upstream-tls-server-name", "localhost"]
    if how == "mTLS":
        flags += ["-upstream-tls-cert", str(d / "client.pem"), "-upstream-tls-key",
                  str(d / "client.key")]  # fmt: skip
    front = start_front(upstream.server.port, store_address(vstore), "-db", str(DB), *flags)
    assert front.tls == "plaintext"
    for _ in range(2):  # forwarded (dimension learnt), then local
        _served(front, upstream, front.channel)
    assert front.counts() == (1, 1)


@pytest.mark.parametrize("how", ["plaintext", "rogue-ca", "no-client-cert"])
def test_front_refuses_an_upstream_it_cannot_verify(
    start_front: Callable[..., Front], serve: Callable[..., Running], vstore: VectorStore,
    holder: IndexHolder, users: object, tls_certs: Path, how: str,
) -> None:  # fmt: skip
    d = tls_certs
    client_ca = d / "ca.pem" if how == "no-client-cert" else None
    tls = TLSConfig(d / "server.pem", d / "server.key", client_ca=client_ca)
    upstream = serve(vstore, holder, channel_creds=channel_creds(d, "client"), tls=tls)
    flags = {"plaintext": [], "rogue-ca": ["-upstream-tls-ca", str(d / "rogue.pem")],
             "no-client-cert": ["-upstream-tls-ca", str(d / "ca.pem")]}[how]  # fmt: skip
    front = start_front(upstream.server.port, store_address(vstore), "-db", str(DB), *flags)
    assert _code(_model_info(front.channel)) == grpc.StatusCode.UNAVAILABLE


def _run(front_bin: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The binary with args before an upstream and a store that answer nothing, in an
    environment without PERSONA_* variables but env's."""
    return run_front(front_bin, "-upstream", "127.0.0.1:1", *args, env=env)


@pytest.mark.parametrize(("flags", "message"), [
    (["-tls-cert", "server.pem"], "-tls-cert and -tls-key go together"),
    (["-tls-key", "server.key"], "-tls-cert and -tls-key go together"),
    (["-tls-client-ca", "ca.pem"], "-tls-client-ca needs -tls-cert and -tls-key"),
    (["-upstream-tls-cert", "client.pem", "-upstream-tls-key", "client.key"],
     "-upstream-tls-cert and -upstream-tls-key need -upstream-tls-ca"),
    (["-upstream-tls-ca", "ca.pem", "-upstream-tls-key", "client.key"],
     "-upstream-tls-cert and -upstream-tls-key go together"),
    (["-upstream-tls-server-name", "localhost"],
     "-upstream-tls-server-name needs -upstream-tls-ca"),
    (["-tls-cert", "server.pem", "-tls-key", "missing.key"], "-tls-key: stat "),
    (["-tls-cert", "server.pem", "-tls-key", "server.pem"], "-tls-cert / -tls-key: "),
    (["-upstream-tls-ca", "server.key"], "-upstream-tls-ca: no PEM certificate"),
    (["-max-concurrent-rpcs", "-1"], "-max-concurrent-rpcs"),
])  # fmt: skip
def test_bad_flags_exit_2(
    front_bin: Path, tls_certs: Path, flags: list[str], message: str
) -> None:  # fmt: skip
    """Refused at start (before the store is dialled: 127.0.0.1:1 answers nothing), exit 2,
    the flags named; -print-settings refuses the same combinations."""
    args = [str(tls_certs / f) if f.endswith((".pem", ".key")) else f for f in flags]
    proc = _run(front_bin, "-store", "127.0.0.1:1", *args)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert message in proc.stderr, proc.stderr
    if "/" not in message and "no PEM" not in message:  # not the files' contents: not read
        printed = _run(front_bin, "-store", "127.0.0.1:1", "-print-settings", *args)
        assert printed.returncode == 2 and printed.stdout == "", printed
        assert message in printed.stderr, printed.stderr


def test_print_settings(front_bin: Path, tls_certs: Path) -> None:
    """A container's env and args resolved as at start: one JSON object, flags over
    variables, no secret in it, nothing dialled (the store 127.0.0.1:1 answers nothing)."""
    d = tls_certs
    proc = _run(front_bin, "-listen", "0.0.0.0:50052", "-metrics-listen", "0.0.0.0:9104",
                "-max-batch", "200", *_tls_flags(d, client_ca=True), "-upstream-tls-ca",
                str(d / "ca.pem"), "-print-settings",
                PERSONA_REDIS="redis://user:pa55word@127.0.0.1:1/9,127.0.0.1:2",
                PERSONA_DIM="64", PERSONA_MAX_BATCH="500", PERSONA_VERSION_CACHE_S="0.5",
                PERSONA_STORE_TIMEOUT_MS="250", PERSONA_MAX_CONCURRENT_RPCS="",
                PERSONA_AUTH_TOKEN="s3cret-token", PERSONA_MODELS="/models")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "s3cret" not in proc.stdout
    assert "pa55word" not in proc.stdout
    assert json.loads(proc.stdout) == {
        "listen": "0.0.0.0:50052", "upstream": "127.0.0.1:1",
        "store": ["127.0.0.1:1", "127.0.0.1:2"], "db": 9, "dim": 64,
        "metrics_listen": "0.0.0.0:9104", "max_batch": 200, "max_history": 3,
        "max_id_bytes": 256, "version_cache_s": 0.5, "deadline_margin_ms": 2,
        "store_timeout_ms": 250, "max_concurrent_rpcs": 0, "tls": "mTLS", "upstream_tls": True,
        "auth": True, "upstream_conns": 1, "drain_s": 0, "grace_s": 5,
        "served_log_rate": 0.01, "served_topic": "persona.served", "kafka": "127.0.0.1:9092",
        "models": "/models",
    }  # fmt: skip
    proc = _run(front_bin, "-print-settings", PERSONA_REDIS="h:1", PERSONA_MAX_CONCURRENT_RPCS="8")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["max_concurrent_rpcs"], got["tls"], got["upstream_tls"], got["auth"],
            got["models"]) == (8, "plaintext", False, False, "")  # fmt: skip


STREAM = "/persona.test.Held/Stream"  # a streaming method of no service the front knows


class _Holding(grpc.GenericRpcHandler):
    """A fake persona serve (bytes in, bytes out): GetModelInfo and the streaming method
    `STREAM` are held until `release` (`entered` set once one is in), any other call
    answered at once (health Check: an empty answer)."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method.endswith("/GetModelInfo"):
            return grpc.unary_unary_rpc_method_handler(self._held)
        if method == STREAM:
            return grpc.unary_stream_rpc_method_handler(self._stream)
        return grpc.unary_unary_rpc_method_handler(lambda request, context: b"")

    def _held(self, request: bytes, context: Any) -> bytes:
        self.entered.set()
        self.release.wait(60)
        return b""

    def _stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first"
        self.entered.set()
        self.release.wait(60)


@pytest.fixture
def holding() -> Iterator[tuple[_Holding, int]]:
    """The fake upstream and its port; released and stopped after the test."""
    handler = _Holding()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield handler, port
    finally:
        handler.release.set()
        server.stop(0)


@pytest.mark.parametrize("held", ["unary", "stream"])
def test_concurrency_limit(
    start_front: Callable[..., Front], holding: tuple[_Holding, int], vstore: VectorStore,
    users: object, held: str,
) -> None:  # fmt: skip
    """-max-concurrent-rpcs 1: while a forwarded call is in the front, every new call (a
    GetEmbeddings it answers from the store, a forwarded one) gets RESOURCE_EXHAUSTED with
    grpcio's message, counted; health checks pass (a full front must not fail its probes);
    once it ends, calls are answered again."""
    upstream, port = holding
    front = start_front(port, store_address(vstore), "-db", str(DB), "-dim", str(DIM),
                        "-max-concurrent-rpcs", "1", "-metrics-listen", "127.0.0.1:0")  # fmt: skip
    health = health_pb2_grpc.HealthStub(front.channel)
    check = health_pb2.HealthCheckRequest()
    if held == "unary":
        first: Any = stub(front.channel).GetModelInfo.future(pb.GetModelInfoRequest(), timeout=60)
    else:
        first = front.channel.unary_stream(STREAM)(b"", timeout=60)
        assert next(first) == b"first"
    assert upstream.entered.wait(30)
    health.Check(check, timeout=10)  # passes the limit (forwarded: the fake's empty answer)
    calls = [lambda: stub(front.channel).GetEmbeddings(REQ, timeout=10),
             _model_info(front.channel)]  # fmt: skip
    for call in calls:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exc.value.details() == LIMIT_MESSAGE
    samples, _ = scrape(front)
    assert value(samples, "persona_front_rejected_total", reason="concurrency") == 2
    assert value(samples, "persona_front_in_flight_calls") == 1
    upstream.release.set()
    if held == "unary":
        assert first.result(timeout=30) == pb.GetModelInfoResponse()
    else:
        assert list(first) == []  # the stream ended
    assert stub(front.channel).GetEmbeddings(REQ, timeout=10).vectors  # from the store
    for call in calls[1:]:
        call()  # forwarded: the fake's empty answers
    samples, _ = scrape(front)
    assert value(samples, "persona_front_rejected_total", reason="concurrency") == 2
    assert value(samples, "persona_front_in_flight_calls") == 0
    assert front.counts() == (1, 0)
