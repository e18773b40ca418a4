"""Behaviour at the edges: bad input, unknown versions, slow / dead / broken stores."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from persona.v1 import service_pb2 as pb
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.index.holder import IndexHolder
from services.stack import free_ports
from services.store.records import StoredVector
from services.store.router import DeadlineReached
from services.store.vectors import VectorStore
from tests.serving.support import DIM, V1, V2, Running

pytestmark = pytest.mark.integration

E, L = pb.GetEmbeddingsRequest, pb.FindLookalikesRequest
BAD = grpc.StatusCode.INVALID_ARGUMENT


def vec(values: Sequence[float]) -> pb.VectorQuery:
    return pb.VectorQuery(values=list(values))


INVALID: list[tuple[str, Any, str]] = [
    ("GetEmbeddings", E(), "user_ids is empty"),
    ("GetEmbeddings", E(user_ids=["u"] * 301), "at most 300"),
    ("GetEmbeddings", E(user_ids=["u1", ""]), "user_ids[1] is empty"),
    ("GetEmbeddings", E(user_ids=["x" * 257]), "longer than 256 bytes"),
    ("GetEmbeddings", E(user_ids=["é" * 129]), "longer than 256 bytes"),
    ("GetEmbeddings", E(user_ids=["u1"], history_depth=4), "history_depth must be in [0, 3]"),
    ("GetEmbeddings", E(user_ids=["u1"], model_version="v9-none"), "unknown model_version"),
    ("GetEmbeddings", E(user_ids=["u1"], model_version="bad version!"), "not a version id"),
    ("GetEmbeddings", E(user_ids=["u1"], encoding=7), "unknown encoding 7"),
    ("FindLookalikes", L(k=5), "set exactly one of user_id, vector, seeds"),
    ("FindLookalikes", L(user_id="u1"), "k must be in [1, 100], got 0"),
    ("FindLookalikes", L(user_id="u1", k=101), "k must be in [1, 100], got 101"),
    ("FindLookalikes", L(user_id="u1", k=-3), "k must be in [1, 100], got -3"),
    ("FindLookalikes", L(user_id="", k=5), "user_id is empty"),
    ("FindLookalikes", L(user_id="x" * 300, k=5), "user_id is longer than 256 bytes"),
    ("FindLookalikes", L(vector=vec([1.0] * (DIM - 1)), k=5), "has 7 values; the served"),
    ("FindLookalikes", L(vector=vec([]), k=5), "has 0 values"),
    ("FindLookalikes", L(vector=vec([1.0] * 7 + [float("nan")]), k=5), "[7] is NaN"),
    ("FindLookalikes", L(vector=vec([float("inf")] + [1.0] * 7), k=5), "[0] is NaN or inf"),
    ("FindLookalikes", L(vector=vec([0.0] * DIM), k=5), "all zeros"),
    # issue #18: the norm's square underflows / overflows float32 (INTERNAL / score-0 before)
    ("FindLookalikes", L(vector=vec([1e-30] * DIM), k=5), "has norm 2.83e-30, outside"),
    ("FindLookalikes", L(vector=vec([1e30] * DIM), k=5), "has norm 2.83e+30, outside"),
    ("FindLookalikes", L(vector=vec([3e38] * DIM), k=5), "has norm 8.49e+38, outside"),
    # issue #18: unknown enum values were taken as the default
    ("GetEmbeddings", E(user_ids=["u1"], fallback=5), "unknown fallback 5"),
    ("FindLookalikes", L(user_id="u1", k=5, seed_mode=3), "unknown seed_mode 3"),
    ("FindLookalikes", L(seeds=pb.UserList(), k=5), "seeds.user_ids is empty"),
    ("FindLookalikes", L(seeds=pb.UserList(user_ids=["a"] * 51), k=5), "at most 50"),
    ("FindLookalikes", L(seeds=pb.UserList(user_ids=["a", ""]), k=5), "user_ids[1] is empty"),
    ("FindLookalikes", L(user_id="u1", k=5, min_score=float("nan")), "min_score must be finite"),
    ("FindLookalikes", L(user_id="u1", k=5, model_version="v9-none"), "unknown model_version"),
]


@pytest.mark.parametrize(("method", "request_", "message"), INVALID)
def test_invalid_argument_says_what_is_wrong(
    running: Running, method: str, request_: Any, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        getattr(running.stub, method)(request_, timeout=5)
    assert ei.value.code() == BAD, ei.value.details()
    assert message.replace("must be finite", "must be a finite number") in ei.value.details()


def test_a_query_vector_counts_by_its_direction(running: Running, users: Any) -> None:
    """A scaled query (here by 1e15 and 1e-15) finds what its unit vector finds."""
    direction = np.asarray(users[V1]["u7"], dtype=np.float64)
    direction /= np.linalg.norm(direction)
    unit = running.stub.FindLookalikes(L(vector=vec(direction), k=10), timeout=5)
    assert unit.neighbors and unit.neighbors[0].user_id == "u7"
    for scale in (1e15, 1e-15):
        got = running.stub.FindLookalikes(L(vector=vec(direction * scale), k=10), timeout=5)
        assert [n.user_id for n in got.neighbors] == [n.user_id for n in unit.neighbors]
        assert [n.score for n in got.neighbors] == pytest.approx(
            [n.score for n in unit.neighbors], abs=1e-5
        )


@pytest.mark.parametrize("method", ["GetEmbeddings", "FindLookalikes", "GetModelInfo"])
def test_a_malformed_body_is_invalid_argument_without_a_traceback(
    running: Running, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes that do not parse as the request (before issue #18: INTERNAL, and a traceback
    in the log for each call)."""
    raw = running.channel.unary_unary(f"/persona.v1.UserEmbeddingService/{method}")
    with caplog.at_level(logging.WARNING), pytest.raises(grpc.RpcError) as ei:
        raw(b"\x0a\xff\xff\xff\x0f", timeout=5)  # a field 1 longer than the body
    assert ei.value.code() == BAD, ei.value.details()
    assert "malformed request body" in ei.value.details()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert running.sample(
        "persona_serving_requests_total",
        service="persona.v1.UserEmbeddingService", method=method, code="INVALID_ARGUMENT",
    ) >= 1  # fmt: skip


def test_retired_version_is_failed_precondition(running: Running, vstore: VectorStore) -> None:
    vstore.set_state("v0-old", "retired")
    with pytest.raises(grpc.RpcError) as ei:
        running.stub.GetEmbeddings(E(user_ids=["u1"], model_version="v0-old"), timeout=5)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "retired" in ei.value.details()


def test_seeds_that_cancel_out(serve: Callable[..., Running], vstore: VectorStore,
                               holder: IndexHolder) -> None:  # fmt: skip
    v = np.arange(1, DIM + 1, dtype=np.float32)
    vstore.put_batch([StoredVector("plus", V1, v, 0, 1, 1), StoredVector("minus", V1, -v, 0, 1, 1)])
    r = serve(vstore, holder)
    req = L(seeds=pb.UserList(user_ids=["plus", "minus"]), k=5)
    with pytest.raises(grpc.RpcError) as ei:
        r.stub.FindLookalikes(req, timeout=5)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    req.seed_mode = pb.SEED_MODE_UNION  # the union works on the same seeds
    assert len(r.stub.FindLookalikes(req, timeout=5).neighbors) == 5


class SlowStore:
    """Delegates to a real store after `delay_s`. `read_batch` keeps the port's contract
    (answer or raise DeadlineReached by the deadline), as the real one does by bounding
    every socket wait; the real sockets are tested below (a hung Valkey) and in
    tests/faults (a delaying proxy)."""

    def __init__(self, inner: VectorStore, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def active_version(self) -> str | None:
        return self.inner.active_version()

    def versions(self) -> dict[str, str]:
        return self.inner.versions()

    def score_columns(self, version: str) -> str | None:
        return self.inner.score_columns(version)

    def get_batch(self, ids: Sequence[str], version: str, history: int = 1) -> Any:
        time.sleep(self.delay_s)
        return self.inner.get_batch(ids, version, history)

    def read_batch(self, ids: Sequence[str], version: str, history: int, deadline: float) -> Any:
        wait = min(self.delay_s, deadline - time.monotonic())
        time.sleep(max(0.0, wait))
        if wait < self.delay_s:
            raise DeadlineReached("slow store")
        return self.inner.read_batch(ids, version, history, deadline)


class BrokenStore(SlowStore):
    def get_batch(self, ids: Sequence[str], version: str, history: int = 1) -> Any:
        raise RuntimeError("secret internals at 0xdeadbeef")

    def read_batch(self, ids: Sequence[str], version: str, history: int, deadline: float) -> Any:
        raise RuntimeError("secret internals at 0xdeadbeef")


def test_slow_store_gives_deadline_exceeded_within_the_deadline(
    serve: Callable[..., Running], vstore: VectorStore, holder: IndexHolder
) -> None:
    r = serve(SlowStore(vstore, 2.0), holder, store_timeout_s=5.0)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        r.stub.GetEmbeddings(E(user_ids=["u1"]), timeout=0.3)
    assert time.monotonic() - t0 < 1.0
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the server's own store timeout (client sent no deadline) gives UNAVAILABLE
    r2 = serve(SlowStore(vstore, 2.0), holder, store_timeout_s=0.2)
    with pytest.raises(grpc.RpcError) as ei:
        r2.stub.GetEmbeddings(E(user_ids=["u1"]))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "did not answer within" in ei.value.details()
    assert r2.sample("persona_serving_store_errors_total", kind="timeout") == 1


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung store)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        sock.close()


def test_hung_redis_gives_deadline_exceeded_not_a_hang(
    serve: Callable[..., Running], vstore: VectorStore, holder: IndexHolder, silent_port: int
) -> None:
    store = VectorStore(vstore.client)
    store.client = redis.Redis(port=silent_port, socket_timeout=30)
    r = serve(store, holder)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        r.stub.GetEmbeddings(E(user_ids=["u1"], model_version=V2), timeout=0.5)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 1.5
    store.client.close()


def test_dead_redis_gives_unavailable(
    serve: Callable[..., Running], vstore: VectorStore, holder: IndexHolder
) -> None:
    store = VectorStore(vstore.client)
    (port,) = free_ports(1)
    store.client = redis.Redis(port=port, retry=Retry(NoBackoff(), 0))
    r = serve(store, holder)
    with pytest.raises(grpc.RpcError) as ei:
        r.stub.GetEmbeddings(E(user_ids=["u1"]), timeout=5)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "store unavailable" in ei.value.details()
    assert r.sample("persona_serving_store_errors_total", kind="unavailable") == 1


def test_unexpected_errors_are_internal_without_details(
    serve: Callable[..., Running], vstore: VectorStore, holder: IndexHolder
) -> None:
    r = serve(BrokenStore(vstore, 0), holder)
    with pytest.raises(grpc.RpcError) as ei:
        r.stub.GetEmbeddings(E(user_ids=["u1"]), timeout=5)
    assert ei.value.code() == grpc.StatusCode.INTERNAL
    assert ei.value.details() == "internal error"
    assert r.sample(
        "persona_serving_requests_total",
        service="persona.v1.UserEmbeddingService", method="GetEmbeddings", code="INTERNAL",
    ) == 1  # fmt: skip
    # and the process goes on serving
    assert r.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).active_version == V1


def test_no_index_yet_is_failed_precondition(
    serve: Callable[..., Running], vstore: VectorStore, users: Any
) -> None:
    r = serve(vstore, IndexHolder())
    with pytest.raises(grpc.RpcError) as ei:
        r.stub.FindLookalikes(L(user_id="u1", k=3), timeout=5)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not ready" in ei.value.details()
    req = E(user_ids=["nobody"], fallback=pb.FALLBACK_POPULATION_PRIOR)
    resp = r.stub.GetEmbeddings(req, timeout=5)  # no index: no prior, plain NOT_FOUND
    assert resp.statuses[0] == pb.EMBEDDING_STATUS_NOT_FOUND
