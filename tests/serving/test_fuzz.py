"""Random requests against a running server: every answer is a well-formed response or one
of the expected error codes with a message; nothing crashes it, nothing hangs."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from persona.v1 import service_pb2 as pb

from tests.serving.support import DIM, Running

pytestmark = pytest.mark.integration

OK_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
ids = st.one_of(
    st.sampled_from(["u1", "u2", "u150", "nobody", ""]),
    st.text(max_size=300),
)
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
versions = st.one_of(st.just(""), st.sampled_from(["v1-serve", "v2-serve", "v0-old"]), st.text())
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)

embeddings = st.builds(
    pb.GetEmbeddingsRequest,
    user_ids=st.lists(ids, max_size=350),
    model_version=versions,
    history_depth=st.integers(0, 2**32 - 1),
    encoding=st.sampled_from([0, 1, 2, 99]),
    fallback=st.sampled_from([0, 1, 2, 5]),
)
queries = st.one_of(
    st.fixed_dictionaries({"user_id": ids}),
    st.fixed_dictionaries(
        {
            "vector": st.builds(
                pb.VectorQuery, values=st.lists(floats, min_size=DIM - 1, max_size=DIM + 1)
            )
        }
    ),
    st.fixed_dictionaries({"seeds": st.builds(pb.UserList, user_ids=st.lists(ids, max_size=60))}),
    st.just({}),
)
lookalikes = st.builds(
    lambda q, **kw: pb.FindLookalikesRequest(**q, **kw),
    queries,
    k=st.one_of(st.integers(-5, 120), ints),
    exclude_seeds=st.booleans(),
    min_score=st.one_of(st.none(), floats),
    model_version=versions,
    seed_mode=st.sampled_from([0, 1, 2, 3]),
)
calls = st.one_of(
    st.tuples(st.just("GetEmbeddings"), embeddings),
    st.tuples(st.just("FindLookalikes"), lookalikes),
    st.tuples(st.just("GetModelInfo"), st.just(pb.GetModelInfoRequest())),
)


def test_random_requests_never_break_the_server(running: Running) -> None:
    seen: set[Any] = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(calls)
    def one(call: tuple[str, Any]) -> None:
        method, req = call
        try:
            resp = getattr(running.stub, method)(req, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() in OK_CODES, (exc.code(), exc.details(), req)
            assert exc.details()
            seen.add(exc.code())
            return
        seen.add(grpc.StatusCode.OK)
        if method == "GetEmbeddings":
            assert len(resp.statuses) == len(req.user_ids)
            width = 2 if req.encoding == pb.VECTOR_ENCODING_FLOAT16 else 4
            assert len(resp.vectors) == len(req.user_ids) * DIM * width
        elif method == "FindLookalikes":
            assert len(resp.neighbors) <= req.k

    one()
    assert grpc.StatusCode.OK in seen and grpc.StatusCode.INVALID_ARGUMENT in seen
    assert running.sample(
        "persona_serving_requests_total",
        service="persona.v1.UserEmbeddingService", method="GetEmbeddings", code="INTERNAL",
    ) == 0  # fmt: skip
