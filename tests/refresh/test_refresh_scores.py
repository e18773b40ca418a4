"""Outcome scores written with the vectors (issue #16 item 2) and served with them.

The refresher writes each user's calibrated outcome probabilities into the vector record
(LAYOUT.md, layout 2) and records the version's score columns; `GetEmbeddings` with
`include_scores` returns them under the version it read, through a cutover; without the
flag the response carries none. Real Valkey, real broker, real tiny models.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc
from prometheus_client import CollectorRegistry

from encoder.api import Encoder
from services.index.holder import IndexHolder
from services.serving.metrics import serving_metrics
from services.serving.server import ServingServer
from services.serving.versions import parse_columns
from services.store.forget import StoreForgetter
from tests.refresh.conftest import Env
from tests.refresh.support import add_events
from tests.serving.support import BASE

pytestmark = pytest.mark.integration


def _expected(env: Env, version: str, users: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The stored vectors of `users` under `version` and the scores the version's heads give
    them: (N, D), (N, S)."""
    enc = Encoder.load(env.models, version, "cpu")
    assert enc.outcomes is not None, "a trained version keeps its outcome heads"
    got = env.vectors.get_batch(users, version)
    vecs = np.stack([vs[0].vector for vs in got])
    return vecs, enc.outcomes.scores(vecs)


def test_scores_written_with_vectors_and_served_by_version_through_a_cutover(env: Env) -> None:
    users = [f"s{i:03d}" for i in range(60)]
    add_events(env.windows, users, 4, seed=21)
    env.refresher().run(threading.Event(), until_idle=True)
    v1 = env.v1
    assert env.vectors.active_version() == v1

    # 1. the store: every record carries the scores its version's heads give its vector
    cols = parse_columns(env.vectors.score_columns(v1))
    heads = Encoder.load(env.models, v1, "cpu").outcomes
    assert heads is not None and len(cols) == len(heads.score_columns()) > 0
    assert {c.outcome for c in cols} >= {"(any)"} and all(
        c.outcome == "(any)" or c.outcome.startswith("type=") for c in cols
    )
    vecs1, want1 = _expected(env, v1, users)
    stored = np.stack([vs[0].scores for vs in env.vectors.get_batch(users, v1)])  # (N, S)
    np.testing.assert_allclose(stored, want1, atol=1e-3)  # float16 in the store
    assert ((stored >= 0) & (stored <= 1)).all()

    # 2. a cutover to v2: back-filled with v2's scores, then flipped
    env.cut_over_to_v2()
    _, want2 = _expected(env, env.v2, users)
    assert not np.allclose(want1, want2, atol=1e-3), "two seeds, two sets of heads"

    # 3. served: the active version's scores, a pinned version's own, none when not asked
    cfg = replace(BASE, dim=vecs1.shape[1])
    server = ServingServer(cfg, env.vectors, IndexHolder(), serving_metrics(CollectorRegistry()))
    server.start()
    channel = grpc.insecure_channel(f"localhost:{server.port}")
    try:
        stub = service_pb2_grpc.UserEmbeddingServiceStub(channel)
        ids = [*users[:10], "nobody"]
        for pinned, want in (("", want2), (v1, want1)):
            resp = stub.GetEmbeddings(
                pb.GetEmbeddingsRequest(user_ids=ids, model_version=pinned, include_scores=True)
            )
            assert resp.model_version == (pinned or env.v2)
            assert resp.n_scores == want.shape[1]
            got = np.frombuffer(resp.scores, "<f4").reshape(len(ids), resp.n_scores)
            np.testing.assert_allclose(got[:10], want[:10], atol=1e-3)
            assert np.isnan(got[10]).all()  # not found: NaN, never a made-up probability
        half = stub.GetEmbeddings(
            pb.GetEmbeddingsRequest(user_ids=ids, include_scores=True, encoding=2, history_depth=1)
        )
        got16 = np.frombuffer(half.scores, "<f2").reshape(len(ids), half.n_scores)
        np.testing.assert_allclose(got16[:10].astype(np.float32), want2[:10], atol=2e-3)
        assert sum(half.history_counts) * half.n_scores * 2 == len(half.history_scores)
        plain = stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=ids))
        assert plain.n_scores == 0 and plain.scores == b"" and plain.history_scores == b""
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        by_ver = {v.version: v for v in info.versions}
        for ver in (v1, env.v2):
            named = [(c.outcome, c.horizon_ms) for c in by_ver[ver].score_columns]
            stored_cols = parse_columns(env.vectors.score_columns(ver))
            assert named == [(c.outcome, c.horizon_ms) for c in stored_cols]
        _audiences(env, stub, users, want2)
    finally:
        channel.close()
        server.stop(grace_s=0)


def _audiences(
    env: Env, stub: service_pb2_grpc.UserEmbeddingServiceStub, users: list[str], want: np.ndarray
) -> None:
    """GetAudience on the active version (v2): threshold, paging, top N, refusals, forget."""
    cols = parse_columns(env.vectors.score_columns(env.v2))
    kept = [j for j, c in enumerate(cols) if c.audience]
    assert {cols[j].outcome for j in kept} == {"(any)"}  # the default PERSONA_REFRESH_AUDIENCES
    j = max(kept, key=lambda c: float(np.std(want[:, c])))  # the most spread of them
    col, p = cols[j], want[:, j]
    t = float(np.median(p))
    clear = np.abs(p - t) > 2e-3  # float16 in the store: leave the users at the edge out
    expect = {u for u, keep, q in zip(users, clear, p, strict=True) if keep and q >= t}

    def pages(**kw: object) -> list[pb.GetAudienceResponse]:
        out, token = [], ""
        while True:
            r = stub.GetAudience(pb.GetAudienceRequest(outcome=col.outcome,
                                                       horizon_ms=col.horizon_ms,
                                                       page_token=token, **kw))  # fmt: skip
            out.append(r)
            if not (token := r.next_page_token):
                return out

    paged = pages(min_score=t, page_size=7)
    got = [u for r in paged for u in r.user_ids]
    assert len(got) == len(set(got)), "a user on two pages"
    assert len(paged) >= 2 and all(len(r.user_ids) <= 7 for r in paged)
    assert {r.model_version for r in paged} == {env.v2}
    assert expect <= set(got) and all(p[users.index(u)] >= t - 2e-3 for u in got)
    scores = np.array([s for r in paged for s in r.scores])
    np.testing.assert_allclose(scores, [p[users.index(u)] for u in got], atol=2e-3)

    # below a ceiling (a churn-risk audience), and a range
    low = {u for u, keep, q in zip(users, clear, p, strict=True) if keep and q <= t}
    below = [u for r in pages(max_score=t, page_size=10) for u in r.user_ids]
    assert low <= set(below) and len(below) == len(set(below))
    assert all(p[users.index(u)] <= t + 2e-3 for u in below)
    lo_t = float(np.quantile(p, 0.25))
    ranged = {u for r in pages(min_score=lo_t, max_score=t) for u in r.user_ids}
    assert all(lo_t - 2e-3 <= p[users.index(u)] <= t + 2e-3 for u in ranged)
    assert ranged and ranged <= set(below)

    [top] = pages(top_n=5)
    best = np.sort(p)[::-1]
    assert len(top.user_ids) == 5 and top.threshold <= best[4] + 2e-3
    assert all(p[users.index(u)] >= best[5] - 2e-3 for u in top.user_ids)

    forged = base64.urlsafe_b64encode(f'["{env.v2}",0,0.5,0,0,-1,NaN]'.encode()).decode()
    for bad in ({"outcome": "type=no-such", "horizon_ms": col.horizon_ms, "min_score": 0.5},
                {"outcome": col.outcome, "horizon_ms": col.horizon_ms, "min_score": 1.5},
                {"outcome": col.outcome, "horizon_ms": col.horizon_ms},
                {"page_token": "garbage", "min_score": 0.1},
                {"outcome": col.outcome, "horizon_ms": col.horizon_ms, "top_n": 3,
                 "max_score": 0.5},
                {"outcome": col.outcome, "horizon_ms": col.horizon_ms, "min_score": 0.6,
                 "max_score": 0.5},
                # uint32's largest: its threshold read every member in one call
                {"outcome": col.outcome, "horizon_ms": col.horizon_ms, "top_n": 2**32 - 1},
                # a forged token whose ceiling is NaN read as a store error (UNAVAILABLE)
                {"page_token": forged, "min_score": 0.1}):  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            stub.GetAudience(pb.GetAudienceRequest(**bad))  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad

    other = next(c for c in cols if not c.audience)  # scored, not kept in audience sets
    with pytest.raises(grpc.RpcError) as err:
        req = pb.GetAudienceRequest(outcome=other.outcome, horizon_ms=other.horizon_ms)
        req.min_score = 0.5
        stub.GetAudience(req)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    gone = got[0]  # a forgotten user leaves every audience of every version
    forgetter = StoreForgetter(env.client)
    try:
        forgetter.forget([gone], at_ms=int(time.time() * 1000))
    finally:
        forgetter.close()
    after = {u for r in pages(min_score=0.0) for u in r.user_ids}
    assert gone not in after and len(after) == len(users) - 1
