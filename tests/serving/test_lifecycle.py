"""Graceful shutdown, /metrics scraped over HTTP, and the population prior kept exact."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persona.v1 import service_pb2 as pb
from persona_client import ClientConfig, PersonaClient
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from services.index import IndexConfig
from services.index.holder import FollowConfig, IndexHolder, VersionedFollower
from services.index.prior import PriorIndex
from services.stack import free_ports
from services.store.vectors import VectorStore
from tests.serving.support import DIM, V1, Running, unit
from tests.serving.test_edges import SlowStore


@pytest.mark.integration
def test_graceful_shutdown_health_first_then_in_flight_calls_finish(
    serve: Callable[..., Running], vstore: VectorStore, holder: IndexHolder, users: Any
) -> None:
    r = serve(SlowStore(vstore, 1.0), holder, drain_s=0.5, grace_s=5.0, store_timeout_s=5.0)
    health = health_pb2_grpc.HealthStub(r.channel)
    service = "persona.v1.UserEmbeddingService"
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == serving
    result: dict[str, Any] = {}

    def slow_call() -> None:
        result["resp"] = r.stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=["u1"]), timeout=10)

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.2)  # the call is in flight, waiting for the slow store
    stopper = threading.Thread(target=r.server.stop)
    stopper.start()
    time.sleep(0.2)  # within drain_s: still answering, but NOT_SERVING
    status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    caller.join(10)
    stopper.join(10)
    assert not stopper.is_alive()
    assert result["resp"].statuses[0] == pb.EMBEDDING_STATUS_FOUND  # finished within grace
    with pytest.raises(grpc.RpcError) as ei:
        r.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.integration
def test_health_waits_for_the_index_then_says_serving(
    serve: Callable[..., Running], vstore: VectorStore, holder: IndexHolder, users: Any
) -> None:
    """A replica that follows the index reports its service NOT_SERVING (readiness: probes
    keep traffic away) until an index is in, the server as a whole SERVING (liveness);
    calls are answered meanwhile, lookalikes refused."""
    empty = IndexHolder()
    r = serve(vstore, empty, ready=empty.wait_ready)
    health = health_pb2_grpc.HealthStub(r.channel)
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    service = health_pb2.HealthCheckRequest(service="persona.v1.UserEmbeddingService")
    assert health.Check(service, timeout=5).status == not_serving
    whole = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert whole == health_pb2.HealthCheckResponse.SERVING
    uid = next(iter(users[V1]))
    got = r.stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=[uid]), timeout=5)
    assert got.statuses[0] == pb.EMBEDDING_STATUS_FOUND
    with pytest.raises(grpc.RpcError) as ei:
        r.stub.FindLookalikes(pb.FindLookalikesRequest(user_id=uid, k=3), timeout=5)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    empty.swap(holder.current())
    deadline = time.monotonic() + 10
    status = not_serving
    while time.monotonic() < deadline and status == not_serving:
        time.sleep(0.05)
        status = health.Check(service, timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert len(r.stub.FindLookalikes(pb.FindLookalikesRequest(user_id=uid, k=3)).neighbors) == 3


@pytest.mark.integration
def test_demo_client_waits_for_readiness_not_liveness(
    serve: Callable[..., Running], vstore: VectorStore, holder: IndexHolder, users: Any
) -> None:
    """`make demo` asks for lookalikes right after `wait_serving`: it must wait for the
    index (the server as a whole is SERVING from its start)."""
    empty = IndexHolder()
    r = serve(vstore, empty, ready=empty.wait_ready)
    with PersonaClient(ClientConfig(f"localhost:{r.server.port}", timeout_s=5)) as client:
        with pytest.raises(TimeoutError):
            client.wait_ready(timeout_s=1.0)
        empty.swap(holder.current())
        client.wait_ready(timeout_s=10)
        assert len(client.find_lookalikes(user_id=next(iter(users[V1])), k=3).user_ids) == 3


def test_follower_with_no_active_version_is_ready_without_an_index() -> None:
    empty = IndexHolder()
    follow = FollowConfig("127.0.0.1:1", "unused", IndexConfig(dim=DIM, gpu="off"), check_s=60)
    follower = VersionedFollower(follow, empty, lambda: None)
    follower.start()
    try:
        assert empty.wait_ready(10)
        assert empty.current() is None
    finally:
        follower.stop()


@pytest.mark.integration
def test_metrics_are_scraped_over_http(running: Running) -> None:
    (port,) = free_ports(1)
    http, thread = start_http_server(port, addr="127.0.0.1", registry=running.registry)
    try:
        running.stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=["u1", "zz"]), timeout=5)
        with pytest.raises(grpc.RpcError):
            running.stub.GetEmbeddings(pb.GetEmbeddingsRequest(), timeout=5)
        running.stub.FindLookalikes(pb.FindLookalikesRequest(user_id="u1", k=5), timeout=5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        http.shutdown()
        thread.join(5)
    samples = {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    svc = "persona.v1.UserEmbeddingService"
    req = "persona_serving_requests_total"
    assert value(req, service=svc, method="GetEmbeddings", code="OK") == 1
    assert value(req, service=svc, method="GetEmbeddings", code="INVALID_ARGUMENT") == 1
    assert value(req, service=svc, method="FindLookalikes", code="OK") == 1
    assert value("persona_serving_embeddings_total", status="found") == 1
    assert value("persona_serving_embeddings_total", status="not_found") == 1
    assert value("persona_serving_batch_size_count", method="GetEmbeddings") == 2
    assert value("persona_serving_lookalike_neighbors_count") == 1
    lat = "persona_serving_request_seconds_count"
    assert value(lat, service=svc, method="GetEmbeddings") == 2
    assert value("persona_serving_index_size") == 200
    assert "persona_serving_store_errors_total" in text


def test_prior_stays_the_mean_direction_at_the_mean_length_through_upserts_and_deletes() -> None:
    rng = np.random.default_rng(0)
    idx = PriorIndex(IndexConfig(dim=DIM, gpu="off"))
    assert idx.prior() is None
    truth: dict[str, np.ndarray] = {}
    for step in range(30):
        ids = [f"u{i}" for i in rng.integers(0, 60, size=8)]  # repeats and replacements
        vecs = rng.normal(size=(8, DIM)).astype(np.float32) * rng.uniform(0.1, 5)
        idx.upsert(ids, vecs)
        for u, v in zip(ids, vecs, strict=True):
            truth[u] = v
        if step % 3 == 0:
            gone = [f"u{i}" for i in rng.integers(0, 60, size=5)]
            idx.delete([*gone, "never-there"])
            for u in gone:
                truth.pop(u, None)
        prior = idx.prior()
        assert prior is not None and idx.size == len(truth)
        vs = np.asarray(list(truth.values()), dtype=np.float64)
        length = np.linalg.norm(vs, axis=1).mean()
        want = unit(np.mean([unit(v) for v in vs], axis=0)) * length
        np.testing.assert_allclose(prior.vector, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        idx.upsert(["bad"], np.full((1, DIM), np.nan, np.float32))
    np.testing.assert_allclose(idx.prior().vector, want, rtol=1e-5, atol=1e-5)  # type: ignore[union-attr]
