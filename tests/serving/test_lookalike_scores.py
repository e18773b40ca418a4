"""FindLookalikes filtered by a propensity range (issue #16 item 3).

A version of its own (V3) with two score columns, 300 users of which every tenth was
written without scores, served by its own index; the module's vstore (db 9, flushed at the
module's start) holds it beside the V1/V2 users of the `running` fixture, whose V1 stores no
scores. The reference is brute force: the k * 8 nearest users by exact cosine, their stored
(float16) scores filtered, the best k kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from persona.v1 import service_pb2 as pb

from services.index import IndexConfig
from services.index.holder import IndexHolder, ServedIndex
from services.index.prior import PriorIndex
from services.serving.lookalikes import CANDIDATE_FACTOR
from services.store.records import StoredVector
from services.store.vectors import VectorStore
from tests.serving.support import DIM, NOW_MS, Running, unit

V3 = "v3-lookalike-scores"
HOUR, DAY = 3_600_000, 86_400_000
COLUMNS = [("(any)", HOUR), ("type=purchase", DAY)]
N = 300


@pytest.fixture(scope="module")
def scored(vstore: VectorStore) -> tuple[list[str], np.ndarray, np.ndarray]:
    """V3's users: ids, unit vectors (N, D), stored scores (N, 2) as read back (float16
    rounded; NaN for every tenth user, written without scores)."""
    rng = np.random.default_rng(7)
    ids = [f"s{i}" for i in range(N)]
    vecs = unit(rng.normal(size=(N, DIM)))  # (N, D)
    scores = rng.uniform(size=(N, len(COLUMNS))).astype(np.float16).astype(np.float32)
    scores[::10] = np.nan
    cols = [{"outcome": o, "horizon_ms": h, "calibrated": True} for o, h in COLUMNS]
    vstore.set_score_columns(V3, json.dumps({"columns": cols}))
    vstore.put_batch(
        [
            StoredVector(u, V3, vecs[i], NOW_MS - 5000, 10, 1, None if np.isnan(s[0]) else s)
            for i, (u, s) in enumerate(zip(ids, scores, strict=True))
        ]
    )
    return ids, vecs, scores


@pytest.fixture(scope="module")
def holder3(scored: tuple[list[str], np.ndarray, np.ndarray]) -> IndexHolder:
    ids, vecs, _ = scored
    index = PriorIndex(IndexConfig(dim=DIM, gpu="off"))
    index.upsert(ids, vecs)
    return IndexHolder(ServedIndex(V3, index))


def _brute(
    scored: tuple[list[str], np.ndarray, np.ndarray], query: np.ndarray, k: int, column: int,
    lo: float, hi: float, exclude: str | None = None,
) -> list[str]:  # fmt: skip
    ids, vecs, scores = scored
    cos = vecs.astype(np.float64) @ (query / np.linalg.norm(query))  # (N,)
    order = [i for i in np.argsort(-cos, kind="stable") if ids[i] != exclude]
    cands = order[: k * CANDIDATE_FACTOR]
    return [ids[i] for i in cands if lo <= scores[i, column] <= hi][:k]


def _rng(column: int, lo: float | None = None, hi: float | None = None) -> pb.ScoreRange:
    outcome, horizon = COLUMNS[column]
    return pb.ScoreRange(outcome=outcome, horizon_ms=horizon, min=lo, max=hi)


def test_neighbours_lie_in_the_range_and_equal_brute_force(
    serve: Callable[..., Running], vstore: VectorStore, holder3: IndexHolder,
    scored: tuple[list[str], np.ndarray, np.ndarray],
) -> None:  # fmt: skip
    ids, vecs, scores = scored
    stub = serve(vstore, holder3).stub
    rng = np.random.default_rng(11)
    cases = [(1, 0.3, 0.6), (0, 0.0, 0.25), (1, 0.5, 0.53), (0, 0.9, None)]
    short = 0
    for column, lo, hi in cases:
        q = rng.normal(size=DIM).astype(np.float32)
        req = pb.FindLookalikesRequest(
            vector=pb.VectorQuery(values=q.tolist()), k=10, score_range=_rng(column, lo, hi)
        )
        r = stub.FindLookalikes(req)
        got = [n.user_id for n in r.neighbors]
        assert r.model_version == V3
        assert got == _brute(scored, q, 10, column, lo, 1.0 if hi is None else hi)
        for u in got:
            s = scores[ids.index(u), column]
            assert lo <= s <= (1.0 if hi is None else hi), (u, s)
        short += len(got) < 10
    assert short >= 1  # the narrow range: fewer than k pass among the candidates

    # A user query, the user left out; default bounds ([0, 1]) drop only the unscored.
    me = ids[3]
    r = stub.FindLookalikes(pb.FindLookalikesRequest(user_id=me, k=20, exclude_seeds=True,
                                                     score_range=_rng(0)))  # fmt: skip
    got = [n.user_id for n in r.neighbors]
    assert got == _brute(scored, vecs[3], 20, 0, 0.0, 1.0, exclude=me)
    assert len(got) == 20 and all(not np.isnan(scores[ids.index(u), 0]) for u in got)

    # Union of seeds: every neighbour in the range, no seed among them.
    seeds = ids[20:23]
    r = stub.FindLookalikes(pb.FindLookalikesRequest(
        seeds=pb.UserList(user_ids=seeds), k=15, exclude_seeds=True,
        seed_mode=pb.SEED_MODE_UNION, score_range=_rng(1, 0.2, 0.7)))  # fmt: skip
    assert 0 < len(r.neighbors) <= 15 and r.seeds_used == 3
    for n in r.neighbors:
        assert n.user_id not in seeds and 0.2 <= scores[ids.index(n.user_id), 1] <= 0.7

    # Without a range: unchanged, k neighbours, scored or not.
    r = stub.FindLookalikes(pb.FindLookalikesRequest(user_id=me, k=20))
    assert len(r.neighbors) == 20


@pytest.mark.parametrize(
    ("outcome", "horizon", "lo", "hi"),
    [
        ("type=nope", DAY, None, None),  # unknown outcome
        ("(any)", DAY, None, None),  # known outcome, horizon not stored with it
        ("(any)", HOUR, 0.6, 0.4),  # min > max
        ("(any)", HOUR, None, 1.5),  # outside [0, 1]
        ("(any)", HOUR, -0.1, None),
        ("(any)", HOUR, float("nan"), None),
    ],
)
def test_bad_ranges_are_invalid_argument(
    serve: Callable[..., Running], vstore: VectorStore, holder3: IndexHolder,
    outcome: str, horizon: int, lo: float | None, hi: float | None,
) -> None:  # fmt: skip
    stub = serve(vstore, holder3).stub
    rng = pb.ScoreRange(outcome=outcome, horizon_ms=horizon, min=lo, max=hi)
    with pytest.raises(grpc.RpcError) as err:
        stub.FindLookalikes(pb.FindLookalikesRequest(user_id="s1", k=5, score_range=rng))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    if outcome == "type=nope":
        assert "type=purchase" in (err.value.details() or "")  # lists the known outcomes


def test_a_version_without_scores_is_failed_precondition(running: Running) -> None:
    """V1 (the `running` fixture's index) has no score columns."""
    req = pb.FindLookalikesRequest(user_id="u1", k=5, score_range=_rng(0, 0.1, 0.9))
    with pytest.raises(grpc.RpcError) as err:
        running.stub.FindLookalikes(req)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stores no outcome scores" in (err.value.details() or "")
