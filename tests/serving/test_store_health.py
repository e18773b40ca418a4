"""Readiness follows the store (issue #18 item 3): a real Valkey node of its own is
SIGKILLed under a serving replica, which goes NOT_SERVING (liveness stays SERVING) and logs
the outage once, not once a probe or a call; the node comes back on its port, and readiness
with it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persona.v1 import service_pb2 as pb

from services.index.holder import IndexHolder
from services.stack import EmbeddedStack, StackConfig
from services.store.client import connect
from services.store.vectors import VectorStore
from tests.serving.support import V1, Running, put_users

pytestmark = pytest.mark.integration
SERVICE = health_pb2.HealthCheckRequest(service="persona.v1.UserEmbeddingService")
WHOLE = health_pb2.HealthCheckRequest()
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def own_stack() -> Iterator[EmbeddedStack]:
    """A Valkey (and Tansu) of this test alone: it is killed and restarted."""
    with EmbeddedStack(StackConfig(cluster=False)) as stack:
        yield stack


def _wait_status(health: Any, want: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = health.Check(SERVICE, timeout=5).status
        if status == want:
            break
        time.sleep(0.1)
    return int(status) if status is not None else -1


def test_readiness_goes_not_serving_while_the_store_is_gone_and_comes_back(
    own_stack: EmbeddedStack,
    serve: Callable[..., Running],
    holder: IndexHolder,
    caplog: pytest.LogCaptureFixture,
    report: Callable[..., None],
) -> None:
    client = connect(own_stack.addresses.redis, socket_timeout=1.0)
    store = VectorStore(client)
    try:
        put_users(store, V1, 3, seed=5)
        store.set_active(V1)
        r = serve(store, holder, store_probe_s=0.2, store_probe_failures=2)
        health = health_pb2_grpc.HealthStub(r.channel)
        assert health.Check(SERVICE, timeout=5).status == SERVING
        with caplog.at_level(logging.INFO, "services.serving"):
            t_kill = time.monotonic()
            own_stack.kill_valkey(0)
            assert _wait_status(health, NOT_SERVING) == NOT_SERVING
            to_not_serving = time.monotonic() - t_kill
            assert health.Check(WHOLE, timeout=5).status == SERVING  # liveness: no restart
            assert r.sample("persona_serving_store_reachable") == 0
            failed_before = _probes(r)
            # it stays away for a while: many probes fail, the outage is logged once
            deadline = time.monotonic() + 30
            while _probes(r) < failed_before + 10 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _probes(r) >= failed_before + 10
            assert health.Check(SERVICE, timeout=5).status == NOT_SERVING
            for _ in range(20):  # calls meanwhile: each refused and counted, logged once
                with pytest.raises(grpc.RpcError) as ei:
                    r.stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=["u1"]), timeout=5)
                assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert r.sample("persona_serving_store_errors_total", kind="unavailable") == 20
            own_stack.restart_valkey(0)
            t_back = time.monotonic()
            assert _wait_status(health, SERVING) == SERVING
            to_serving = time.monotonic() - t_back
        assert r.sample("persona_serving_store_reachable") == 1
        lines = [rec.getMessage() for rec in caplog.records]
        assert len([m for m in lines if m.startswith("store unreachable")]) == 1, lines
        assert len([m for m in lines if m.startswith("store reachable again")]) == 1, lines
        assert len([m for m in lines if m.startswith("store unavailable during")]) == 1, lines
        put_users(store, V1, 3, seed=5)  # the node came back empty
        store.set_active(V1)
        got = r.stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=["u1"]), timeout=5)
        assert list(got.statuses) == [pb.EMBEDDING_STATUS_FOUND]  # answered again
        report(
            scenario="Valkey node of a serving replica SIGKILLed, restarted on its port"
            " (empty); readiness follows the store",
            produced=20,
            applied=0,
            duplicated=0,
            lost=0,
            recovery_s=round(to_serving, 2),
            note=f"readiness NOT_SERVING {to_not_serving:.2f} s after the kill (probe every"
            " 0.2 s, 2 failures), liveness SERVING throughout (no restart); 20 calls meanwhile"
            " refused UNAVAILABLE and counted; the outage logged once, its end once; recovery"
            " = node back to SERVING; answers again once vectors are written",
        )
    finally:
        store.close()
        client.close()


def _probes(r: Running) -> int:
    """Probes made so far (the watch thread's count)."""
    watch = r.server._store_watch  # noqa: SLF001 - the test reads the probe count only
    assert watch is not None
    return watch.probes
