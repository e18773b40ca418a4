"""The Go front after review: it fails closed when the upstream requires a bearer token
the front does not check, reads the token where persona serve does, forwards a malformed
active pointer to Python, takes gzip-compressed calls, drains on SIGTERM, and starts while
the store is down."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persona.v1 import service_pb2 as pb

from services.index.holder import IndexHolder
from services.store.vectors import VectorStore
from tests.front.conftest import Front, plain, store_address, stub
from tests.go_support import run_front
from tests.serving.support import DB, DIM, Running

pytestmark = pytest.mark.integration

ACTIVE_KEY = "p:{models}:active"
NEARLINE = pb.VECTOR_PART_NEARLINE


def _error(ch: grpc.Channel, req: pb.GetEmbeddingsRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        stub(ch).GetEmbeddings(req, timeout=10)
    return exc.value.code(), exc.value.details()


def test_fails_closed_when_upstream_requires_a_token(
    start_front: Callable[..., Front], serve: Callable[..., Running], vstore: VectorStore,
    holder: IndexHolder, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A front without a token before a server with one: once a forwarded call is refused,
    a GetEmbeddings without the token is refused as Python refuses it, not answered."""
    upstream = serve(vstore, holder, auth_token="s3cret-token")
    monkeypatch.delenv("PERSONA_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("PERSONA_FRONT_AUTH_TOKEN", raising=False)
    front = start_front(upstream.server.port, store_address(vstore), "-db", str(DB),
                        "-dim", str(DIM), "-version-cache", "0s")  # fmt: skip
    good = (("authorization", "Bearer s3cret-token"),)
    req = pb.GetEmbeddingsRequest(user_ids=["u1"], part=NEARLINE)
    with pytest.raises(grpc.RpcError) as exc:  # forwarded, refused by Python
        stub(front.channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _error(front.channel, req) == _error(upstream.channel, req)
    assert _error(front.channel, req)[0] == grpc.StatusCode.UNAUTHENTICATED
    # with the token the caller gets Python's answer (forwarded)
    got = stub(front.channel).GetEmbeddings(req, metadata=good, timeout=10)
    assert plain(got) == plain(upstream.stub.GetEmbeddings(req, metadata=good, timeout=10))
    local, forwarded = front.counts()
    assert local == 0 and forwarded == 3
    assert "every GetEmbeddings is forwarded" in (front.stderr or "")


def test_front_reads_persona_auth_token(
    start_front: Callable[..., Front], serve: Callable[..., Running], vstore: VectorStore,
    holder: IndexHolder, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    upstream = serve(vstore, holder, auth_token="s3cret-token")
    monkeypatch.setenv("PERSONA_AUTH_TOKEN", "s3cret-token")
    front = start_front(upstream.server.port, store_address(vstore), "-db", str(DB),
                        "-dim", str(DIM), "-version-cache", "0s")  # fmt: skip
    req = pb.GetEmbeddingsRequest(user_ids=["u1"], part=NEARLINE)
    assert _error(front.channel, req) == _error(upstream.channel, req)  # no token: refused
    good = (("authorization", "Bearer s3cret-token"),)
    got = stub(front.channel).GetEmbeddings(req, metadata=good, timeout=10)
    assert plain(got) == plain(upstream.stub.GetEmbeddings(req, metadata=good, timeout=10))
    assert front.counts() == (1, 1)  # the token checked by the front, the answer local


@pytest.mark.parametrize("how", ["env", "env-blank", "file", "old-env"])
def test_empty_token_refused(
    front_bin: Path, tmp_path: Path, how: str, vstore: VectorStore
) -> None:
    env: dict[str, str] = {}
    args = ["-listen", "127.0.0.1:0", "-upstream", "127.0.0.1:1", "-store", store_address(vstore)]
    if how == "env":
        env["PERSONA_AUTH_TOKEN"] = ""
    elif how == "env-blank":
        env["PERSONA_AUTH_TOKEN"] = "  "
    elif how == "file":
        (tmp_path / "tok").write_text("\n")
        args += ["-auth-token-file", str(tmp_path / "tok")]
    else:
        env["PERSONA_FRONT_AUTH_TOKEN"] = "x"
    proc = run_front(front_bin, *args, env=env)  # no PERSONA_* of this process
    assert proc.returncode != 0 and proc.stdout == ""
    assert "empty" in proc.stderr or "no longer read" in proc.stderr


def test_malformed_active_pointer_forwarded(
    start_front: Callable[..., Front], running: Running, vstore: VectorStore
) -> None:
    front = start_front(running.server.port, store_address(vstore), "-db", str(DB),
                        "-dim", str(DIM), "-version-cache", "0s")  # fmt: skip
    req = pb.GetEmbeddingsRequest(user_ids=["u1"], part=NEARLINE)
    ok = plain(stub(front.channel).GetEmbeddings(req, timeout=10))
    old = vstore.client.get(ACTIVE_KEY)
    try:
        vstore.client.set(ACTIVE_KEY, "a/b")
        time.sleep(1.2)  # Python's version cache
        got, want = _error(front.channel, req), _error(running.channel, req)
        assert got == want, (got, want)
    finally:
        vstore.client.set(ACTIVE_KEY, old)
    time.sleep(1.2)
    assert plain(stub(front.channel).GetEmbeddings(req, timeout=10)) == ok
    assert front.counts() == (2, 1)


def test_gzip_calls_accepted(
    start_front: Callable[..., Front], running: Running, vstore: VectorStore
) -> None:
    front = start_front(running.server.port, store_address(vstore), "-db", str(DB),
                        "-dim", str(DIM), "-version-cache", "0s")  # fmt: skip
    req = pb.GetEmbeddingsRequest(user_ids=["u1", "nobody", "u2"], part=NEARLINE)
    ch = grpc.insecure_channel(front.address, compression=grpc.Compression.Gzip)
    up = grpc.insecure_channel(f"127.0.0.1:{running.server.port}",
                               compression=grpc.Compression.Gzip)  # fmt: skip
    try:
        for _ in range(2):
            got = plain(stub(ch).GetEmbeddings(req, timeout=10))
            assert got == plain(stub(up).GetEmbeddings(req, timeout=10)) and got.vectors
        info = stub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)  # forwarded
        assert info.active_version
    finally:
        ch.close()
        up.close()
    assert front.counts() == (2, 0)


def test_sigterm_drains_then_stops(
    start_front: Callable[..., Front], running: Running, vstore: VectorStore
) -> None:
    """With -drain (PERSONA_DRAIN_S, as persona serve's drain_s) the front keeps answering
    after SIGTERM, local and forwarded calls alike, while its health says NOT_SERVING and the
    endpoints drop the pod; a second signal ends the drain (the test's way to not wait on a
    duration), then it stops."""
    front = start_front(running.server.port, store_address(vstore), "-db", str(DB),
                        "-dim", str(DIM), "-drain", "10m", "-grace", "5s")  # fmt: skip
    front.proc.send_signal(signal.SIGTERM)
    # the calls below go out once the front said it drains: they are answered during it
    said = concurrent.futures.ThreadPoolExecutor(1).submit(_line_with, front, "draining for")
    assert "draining for 10m0s" in said.result(timeout=30)
    req = pb.GetEmbeddingsRequest(user_ids=["u1"], part=NEARLINE)
    assert plain(stub(front.channel).GetEmbeddings(req, timeout=10)).vectors
    assert stub(front.channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10).active_version
    # health says NOT_SERVING from the front itself (persona serve still says SERVING), so
    # the pod leaves the endpoints even when only the front stops
    check = health_pb2.HealthCheckRequest(service="persona.v1.UserEmbeddingService")
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_pb2_grpc.HealthStub(front.channel).Check(check, timeout=10).status == not_serving
    up = health_pb2_grpc.HealthStub(running.channel).Check(check, timeout=10)
    assert up.status == health_pb2.HealthCheckResponse.SERVING
    assert front.proc.poll() is None
    front.proc.send_signal(signal.SIGTERM)
    assert front.proc.wait(30) == 0
    assert "stopped" in front.stop()


def _line_with(front: Front, text: str) -> str:
    """The first line of the front's stderr holding `text` (read until it comes)."""
    assert front.proc.stderr is not None
    for line in front.proc.stderr:
        if text in line:
            return line
    raise AssertionError(f"the front's stderr ended without {text!r}")


def test_starts_and_forwards_while_the_store_is_down(
    start_front: Callable[..., Front], running: Running
) -> None:
    """A store that does not answer at start: the front still takes the pod's port and
    forwards every call (GetEmbeddings for reason store_error) while it tries again, rather
    than exiting and leaving the port down."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    front = start_front(running.server.port, dead, "-dim", str(DIM))
    req = pb.GetEmbeddingsRequest(user_ids=["u1", "nobody"], part=NEARLINE)
    assert plain(stub(front.channel).GetEmbeddings(req, timeout=10)) == plain(
        stub(running.channel).GetEmbeddings(req, timeout=10)
    )
    assert stub(front.channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10).active_version
    err = front.stop()
    assert "store not reachable yet" in err
    assert front.counts() == (0, 1)
