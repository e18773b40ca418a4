"""The contract of the three methods against a real Valkey (db 9) and a real index."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from persona.v1 import service_pb2 as pb

from services.store.records import StoredVector
from services.store.vectors import VectorStore
from tests.serving.support import DIM, NOW_MS, V1, V2, Running, unit

pytestmark = pytest.mark.integration


def rows(resp: pb.GetEmbeddingsResponse, dtype: str = "<f4") -> np.ndarray:
    return np.frombuffer(resp.vectors, dtype).reshape(len(resp.statuses), resp.dim)


FOUND, NOT_FOUND = pb.EMBEDDING_STATUS_FOUND, pb.EMBEDDING_STATUS_NOT_FOUND


def test_get_embeddings_in_request_order_with_not_found_and_duplicates(
    running: Running, users: dict[str, dict[str, np.ndarray]]
) -> None:
    ids = ["u3", "nobody", "u0", "u3", "u199"]
    resp = running.stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=ids), timeout=5)
    assert resp.model_version == V1 and resp.dim == DIM
    assert resp.encoding == pb.VECTOR_ENCODING_FLOAT32  # unset in the request: float32, named
    assert list(resp.statuses) == [FOUND, NOT_FOUND, FOUND, FOUND, FOUND]
    got = rows(resp)  # one frombuffer for the batch
    for i, u in enumerate(ids):
        want = users[V1].get(u, np.zeros(DIM, np.float32))
        np.testing.assert_array_equal(got[i], want)
    m = resp.meta  # columns, one entry per row
    assert list(m.computed_at_ms) == [NOW_MS - 5000, 0, NOW_MS - 5000, NOW_MS - 5000, NOW_MS - 5000]
    assert list(m.n_events) == [13, 0, 10, 13, 209] and list(m.window_version) == [1, 0, 1, 1, 1]
    assert m.age_seconds[0] == pytest.approx(time.time() - (NOW_MS - 5000) / 1000, abs=60)
    assert m.age_seconds[0] >= 5 and m.age_seconds[1] == 0
    assert not resp.history_counts and not resp.history_vectors  # no history asked for
    assert running.sample("persona_serving_embeddings_total", status="not_found") == 1
    assert running.sample("persona_serving_embeddings_total", status="found") == 4


def test_float16_encoding_and_pinned_version(
    running: Running, users: dict[str, dict[str, np.ndarray]]
) -> None:
    req = pb.GetEmbeddingsRequest(
        user_ids=["u1", "u2"], model_version=V2, encoding=pb.VECTOR_ENCODING_FLOAT16
    )
    resp = running.stub.GetEmbeddings(req, timeout=5)
    assert resp.model_version == V2 and resp.encoding == pb.VECTOR_ENCODING_FLOAT16
    assert len(resp.vectors) == 2 * DIM * 2
    want = np.stack([users[V2]["u1"], users[V2]["u2"]])
    np.testing.assert_allclose(rows(resp, "<f2").astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_history_newest_first(running: Running, vstore: VectorStore) -> None:
    vecs = [np.full(DIM, float(i + 1), np.float32) for i in range(3)]
    vstore.put_batch(
        [StoredVector("hist", V1, v, NOW_MS + i, 5, i + 1) for i, v in enumerate(vecs)]
    )
    req = pb.GetEmbeddingsRequest(user_ids=["hist", "nobody", "u5"], history_depth=2)
    resp = running.stub.GetEmbeddings(req, timeout=5)
    np.testing.assert_array_equal(rows(resp)[0], vecs[2])
    assert list(resp.meta.window_version) == [3, 0, 1]
    assert list(resp.history_counts) == [2, 0, 0]  # "nobody" and u5 (one vector) add none
    h = resp.history_meta
    assert list(h.window_version) == [2, 1] and list(h.computed_at_ms) == [NOW_MS + 1, NOW_MS]
    assert list(h.n_events) == [5, 5] and all(a >= 0 for a in h.age_seconds)
    hist = np.frombuffer(resp.history_vectors, "<f4").reshape(-1, DIM)
    assert len(hist) == sum(resp.history_counts)
    np.testing.assert_array_equal(hist, np.stack([vecs[1], vecs[0]]))


def test_cold_start_fallback_is_the_flagged_population_prior(
    running: Running, users: dict[str, dict[str, np.ndarray]]
) -> None:
    req = pb.GetEmbeddingsRequest(
        user_ids=["new-user", "u7"], fallback=pb.FALLBACK_POPULATION_PRIOR
    )
    resp = running.stub.GetEmbeddings(req, timeout=5)
    assert list(resp.statuses) == [pb.EMBEDDING_STATUS_FALLBACK_PRIOR, FOUND]
    vs = list(users[V1].values())  # the prior: their mean direction at their mean length
    prior = unit(np.mean([unit(v) for v in vs], axis=0)) * np.mean(np.linalg.norm(vs, axis=1))
    np.testing.assert_allclose(rows(resp)[0], prior, atol=1e-5)
    assert resp.meta.n_events[0] == 0 and resp.meta.window_version[0] == 0
    assert resp.meta.computed_at_ms[0] > 0 and resp.meta.age_seconds[0] >= 0
    assert running.sample("persona_serving_embeddings_total", status="fallback") == 1
    # the index holds V1 only: a request pinned to V2 has no prior, the user stays NOT_FOUND
    req.model_version = V2
    resp = running.stub.GetEmbeddings(req, timeout=5)
    assert resp.statuses[0] == NOT_FOUND and resp.meta.computed_at_ms[0] == 0
    assert not rows(resp)[0].any()


def test_a_response_never_mixes_versions_while_the_active_version_flips(
    running: Running, vstore: VectorStore, users: dict[str, dict[str, np.ndarray]]
) -> None:
    ids = [f"u{i}" for i in range(100)]
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            for v in (V2, V1):
                vstore.set_active(v)

    t = threading.Thread(target=flip)
    t.start()
    seen = set()
    try:
        for _ in range(40):
            resp = running.stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=ids), timeout=5)
            seen.add(resp.model_version)
            want = np.stack([users[resp.model_version][u] for u in ids])
            np.testing.assert_array_equal(rows(resp), want)
    finally:
        stop.set()
        t.join()
        vstore.set_active(V1)
    assert seen == {V1, V2}  # both versions were served, each response whole


def brute(users: dict[str, np.ndarray], q: np.ndarray, k: int, exclude: set[str]) -> list[str]:
    ids = [u for u in users if u not in exclude]
    m = np.stack([unit(users[u]) for u in ids])
    order = np.argsort(-(m @ unit(q)), kind="stable")
    return [ids[i] for i in order[:k]]


def test_find_lookalikes_by_user_vector_and_seeds(
    running: Running, users: dict[str, dict[str, np.ndarray]]
) -> None:
    u = users[V1]
    r = running.stub.FindLookalikes(pb.FindLookalikesRequest(user_id="u4", k=10), timeout=5)
    assert r.model_version == V1 and r.seeds_used == 1
    assert [n.user_id for n in r.neighbors] == brute(u, u["u4"], 10, set())
    assert r.neighbors[0].user_id == "u4" and r.neighbors[0].score == pytest.approx(1.0)
    scores = [n.score for n in r.neighbors]
    assert scores == sorted(scores, reverse=True)

    r = running.stub.FindLookalikes(
        pb.FindLookalikesRequest(user_id="u4", k=10, exclude_seeds=True), timeout=5
    )
    assert [n.user_id for n in r.neighbors] == brute(u, u["u4"], 10, {"u4"})

    q = np.random.default_rng(5).normal(size=DIM).astype(np.float32)
    r = running.stub.FindLookalikes(
        pb.FindLookalikesRequest(vector=pb.VectorQuery(values=q.tolist()), k=7), timeout=5
    )
    assert [n.user_id for n in r.neighbors] == brute(u, q, 7, set())

    seeds = ["u1", "u2", "u3", "missing"]
    req = pb.FindLookalikesRequest(seeds=pb.UserList(user_ids=seeds), k=20, exclude_seeds=True)
    r = running.stub.FindLookalikes(req, timeout=5)
    mean = np.mean([unit(u[s]) for s in seeds[:3]], axis=0)
    assert [n.user_id for n in r.neighbors] == brute(u, mean, 20, set(seeds))
    assert (r.seeds_used, r.seeds_missing) == (3, 1)

    req.seed_mode = pb.SEED_MODE_UNION
    r = running.stub.FindLookalikes(req, timeout=5)
    best: dict[str, float] = {}
    for s in seeds[:3]:
        for c in u:
            if c not in seeds:
                best[c] = max(best.get(c, -2.0), float(unit(u[s]) @ unit(u[c])))
    want = sorted(best, key=lambda c: -best[c])[:20]
    assert [n.user_id for n in r.neighbors] == want


def test_min_score_and_k(running: Running) -> None:
    r = running.stub.FindLookalikes(
        pb.FindLookalikesRequest(user_id="u4", k=100, min_score=0.5), timeout=5
    )
    assert r.neighbors and all(n.score >= 0.5 for n in r.neighbors)
    assert len(r.neighbors) < 100
    r = running.stub.FindLookalikes(pb.FindLookalikesRequest(user_id="u4", k=3), timeout=5)
    assert len(r.neighbors) == 3


def test_lookalike_errors(running: Running) -> None:
    cases = [
        (pb.FindLookalikesRequest(user_id="nobody", k=5), grpc.StatusCode.NOT_FOUND, "nobody"),
        (
            pb.FindLookalikesRequest(user_id="u1", k=5, model_version=V2),
            grpc.StatusCode.FAILED_PRECONDITION,
            "serves model version v1-serve only",
        ),
        (
            pb.FindLookalikesRequest(user_id="u1", k=5, model_version="v9-none"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown model_version",
        ),
    ]
    for req, code, text in cases:
        with pytest.raises(grpc.RpcError) as ei:
            running.stub.FindLookalikes(req, timeout=5)
        assert ei.value.code() == code and text in ei.value.details()


def test_model_info(running: Running) -> None:
    info = running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.active_version == V1 and info.dim == DIM
    states = {(v.version, v.state) for v in info.versions}
    assert states >= {(V1, pb.MODEL_VERSION_STATE_ACTIVE), (V2, pb.MODEL_VERSION_STATE_READY)}
    assert info.index.model_version == V1 and info.index.size == 200
    assert info.index.kind == "flat" and info.index.lag_records == -1
    assert 0 <= info.index.seconds_since_update < 600
