"""The Go front (front/go): its Go unit tests, then persona-front started before a live
persona serve (db 9 of the shared Valkey, tests/serving/conftest.py): every GetEmbeddings
answer through the front equals the Python server's own (age_seconds aside), whether the
front answered it from the store or forwarded it; the other methods and every refused
request go through unchanged; a nearline request is answered with the upstream gone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persona.v1 import service_pb2 as pb

from services.index.holder import IndexHolder
from services.store.records import StoredVector
from services.store.vectors import VectorStore
from tests.front.conftest import Front, both, build, plain, store_address, stub
from tests.serving.support import DB, DIM, NOW_MS, V1, V2, Running

pytestmark = pytest.mark.integration

COLUMNS = {
    "columns": [
        {"outcome": "buy", "horizon_ms": 86_400_000, "calibrated": True},
        {"outcome": "churn", "horizon_ms": 604_800_000, "calibrated": False},
    ]
}
NEARLINE, COMBINED = pb.VECTOR_PART_NEARLINE, pb.VECTOR_PART_COMBINED


def test_go_unit_tests(go_env: dict[str, str]) -> None:
    proc = build(go_env, "--test")  # go test, then go vet
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def extra_users(vstore: VectorStore, users: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """Users beyond `users`: a history of three values, outcome scores (layout 2), markers
    (layout 3), float16 values; and V1's score columns."""
    rng = np.random.default_rng(5)

    def vec() -> np.ndarray:
        return rng.normal(size=DIM).astype(np.float32)

    vstore.set_score_columns(V1, json.dumps(COLUMNS))
    for i in range(3):  # history, newest last
        vstore.put_batch([StoredVector("fh", V1, vec(), NOW_MS + i, 4 + i, 20 + i)])
        vstore.put_batch([StoredVector("fs", V1, vec(), NOW_MS + i, 4 + i, 20 + i,
                                       scores=rng.random(2).astype(np.float32))])  # fmt: skip
    vstore.put_batch([
        StoredVector("fm", V1, vec(), NOW_MS, 7, 30, scores=np.array([0.5], np.float32),
                     marker=(NOW_MS - 100, "e9")),
        StoredVector("fz", V1, vec(), NOW_MS, 7, 31, marker=(NOW_MS - 50, "e3")),
        StoredVector("fm", V2, vec(), NOW_MS, 7, 30),
    ])  # fmt: skip
    half = VectorStore(vstore.client, history=4, dtype="float16")
    try:
        half.put_batch([StoredVector(u, V1, vec() * 1e-3, NOW_MS, 2, 9,
                                     scores=np.array([0.1, 0.2, 0.3], np.float32))
                        for u in ("f16a", "f16b")])  # fmt: skip
    finally:
        half.close()
    return ["fh", "fs", "fm", "fz", "f16a", "f16b"]


@pytest.fixture
def front(
    start_front: Callable[..., Front], running: Running, vstore: VectorStore,
    extra_users: list[str],
) -> Front:  # fmt: skip
    return start_front(running.server.port, store_address(vstore), "-db", str(DB),
                       "-max-batch", "300", "-version-cache", "0s")  # fmt: skip


def _requests(extra: list[str]) -> list[pb.GetEmbeddingsRequest]:
    ids = ["u1", "nobody", "u2", "u1", *extra, "fh", "nobody", "u199"]
    out = []
    for depth in (0, 1, 2):
        for enc in (pb.VECTOR_ENCODING_UNSPECIFIED, pb.VECTOR_ENCODING_FLOAT16):
            for version in ("", V1, V2):
                for part in (pb.VECTOR_PART_UNSPECIFIED, NEARLINE, COMBINED):
                    for scores in (False, True):
                        out.append(pb.GetEmbeddingsRequest(
                            user_ids=ids, history_depth=depth, encoding=enc, model_version=version,
                            part=part, include_scores=scores))  # fmt: skip
    out.append(pb.GetEmbeddingsRequest(user_ids=["u3"], encoding=pb.VECTOR_ENCODING_FLOAT32))
    out.append(pb.GetEmbeddingsRequest(user_ids=["nobody"], history_depth=3))
    out.append(pb.GetEmbeddingsRequest(user_ids=[f"u{i}" for i in range(300)]))
    out.append(
        pb.GetEmbeddingsRequest(user_ids=["u1", "u5"], fallback=pb.FALLBACK_POPULATION_PRIOR)
    )
    out.append(
        pb.GetEmbeddingsRequest(user_ids=["u1", "gone"], fallback=pb.FALLBACK_POPULATION_PRIOR)
    )
    out.append(pb.GetEmbeddingsRequest(user_ids=["u1", "gone"], fallback=pb.FALLBACK_NONE))
    return out


def test_answers_equal_python(front: Front, running: Running, extra_users: list[str]) -> None:
    for req in _requests(extra_users):
        both(front, running, req)
    # the same again: default and combined parts are now known to be nearline (no head)
    for req in _requests(extra_users):
        both(front, running, req)
    local, forwarded = front.counts()
    assert local > forwarded > 0


def test_request_id_comes_back(front: Front, running: Running) -> None:
    req = pb.GetEmbeddingsRequest(user_ids=["u1"], part=NEARLINE)
    _, call = stub(front.channel).GetEmbeddings.with_call(
        req, metadata=(("x-request-id", "rid-123"),), timeout=10
    )
    assert ("x-request-id", "rid-123") in call.initial_metadata()
    _, call = stub(front.channel).GetEmbeddings.with_call(req, timeout=10)
    assert any(k == "x-request-id" and v for k, v in call.initial_metadata())


@pytest.mark.parametrize(
    "req",
    [
        pb.GetEmbeddingsRequest(),
        pb.GetEmbeddingsRequest(user_ids=[f"u{i}" for i in range(301)]),
        pb.GetEmbeddingsRequest(user_ids=["u1", ""]),
        pb.GetEmbeddingsRequest(user_ids=["x" * 257]),
        pb.GetEmbeddingsRequest(user_ids=["u1"], history_depth=4),
        pb.GetEmbeddingsRequest(user_ids=["u1"], encoding=7),  # type: ignore[arg-type]
        pb.GetEmbeddingsRequest(user_ids=["u1"], fallback=9),  # type: ignore[arg-type]
        pb.GetEmbeddingsRequest(user_ids=["u1"], part=8),  # type: ignore[arg-type]
        pb.GetEmbeddingsRequest(user_ids=["u1"], model_version="nope"),
        pb.GetEmbeddingsRequest(user_ids=["u1"], model_version="bad version!"),
        pb.GetEmbeddingsRequest(user_ids=["u1"], part=pb.VECTOR_PART_SHORT_TERM),
    ],
)
def test_refusals_equal_python(
    front: Front, running: Running, req: pb.GetEmbeddingsRequest
) -> None:
    errors = []
    for ch in (front.channel, running.channel):
        with pytest.raises(grpc.RpcError) as exc:
            stub(ch).GetEmbeddings(req, timeout=10)
        errors.append((exc.value.code(), exc.value.details()))
    assert errors[0] == errors[1]
    assert errors[0][0] in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


def test_other_methods_go_through(front: Front, running: Running, holder: IndexHolder) -> None:
    for ch_a, ch_b in ((front.channel, running.channel),):
        got = stub(ch_a).FindLookalikes(pb.FindLookalikesRequest(user_id="u4", k=5), timeout=10)
        want = stub(ch_b).FindLookalikes(pb.FindLookalikesRequest(user_id="u4", k=5), timeout=10)
        assert got == want and len(got.neighbors) == 5
        info = [stub(c).GetModelInfo(pb.GetModelInfoRequest(), timeout=10) for c in (ch_a, ch_b)]
        for i in info:
            i.index.seconds_since_update = 0
        assert info[0] == info[1] and info[0].active_version == V1
        health = health_pb2_grpc.HealthStub(ch_a).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as exc:
        stub(front.channel).FindLookalikes(pb.FindLookalikesRequest(user_id="u4", k=0), timeout=10)
    with pytest.raises(grpc.RpcError) as direct:
        running.stub.FindLookalikes(pb.FindLookalikesRequest(user_id="u4", k=0), timeout=10)
    assert (exc.value.code(), exc.value.details()) == (direct.value.code(), direct.value.details())
    with pytest.raises(grpc.RpcError) as exc:
        front.channel.unary_unary("/persona.v1.Nothing/Here")(b"", timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_nearline_answered_without_upstream(
    start_front: Callable[..., Front], serve: Callable[..., Running], vstore: VectorStore,
    holder: IndexHolder, extra_users: list[str],
) -> None:  # fmt: skip
    upstream = serve(vstore, holder)
    front = start_front(upstream.server.port, store_address(vstore), "-db", str(DB),
                        "-version-cache", "0s")  # fmt: skip
    req = pb.GetEmbeddingsRequest(user_ids=["u1", "fh", "nobody"], history_depth=1, part=NEARLINE)
    want = plain(upstream.stub.GetEmbeddings(req, timeout=10))  # also teaches the dimension
    stub(front.channel).GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=["u1"]), timeout=10)
    upstream.server.stop(grace_s=0)
    time.sleep(0.2)
    assert plain(stub(front.channel).GetEmbeddings(req, timeout=10)) == want
    default = pb.GetEmbeddingsRequest(user_ids=["u1"])  # learnt: V1 has no head
    assert stub(front.channel).GetEmbeddings(default, timeout=10).part == NEARLINE
    with pytest.raises(grpc.RpcError) as exc:  # anything forwarded fails now
        stub(front.channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cluster_answers_equal_python(
    start_front: Callable[..., Front], serve: Callable[..., Running], cluster_stack: Any,
    holder: IndexHolder,
) -> None:  # fmt: skip
    """On a 3-node cluster: keys routed by slot, one pipelined write per node."""
    from services.store.client import connect
    from tests.serving.support import put_users

    client = connect(cluster_stack.addresses.redis)
    store = VectorStore(client, history=4)
    try:
        put_users(store, "v1-front-cl", 120, seed=3, prefix="c")
        put_users(store, "v1-front-cl", 40, seed=4, prefix="c")  # history for c0..c39
        store.set_active("v1-front-cl")
        upstream = serve(store, holder)
        nodes = ",".join(u.split("//")[1] for u in cluster_stack.addresses.redis_nodes)
        front = start_front(upstream.server.port, nodes, "-max-batch", "300",
                            "-version-cache", "0s")  # fmt: skip
        assert front.cluster
        ids = [f"c{i}" for i in range(0, 130, 3)] + ["c1", "c1"]
        for depth in (0, 2, 0, 1):
            both(front, upstream, pb.GetEmbeddingsRequest(user_ids=ids, history_depth=depth,
                                                           part=NEARLINE))  # fmt: skip
        assert front.counts() == (3, 1)  # the first taught the dimension
    finally:
        store.close()
        client.close()
