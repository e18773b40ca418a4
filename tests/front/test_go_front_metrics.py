"""persona-front's own Prometheus metrics (`-metrics-listen`): started before a live persona
serve (db 9 of the shared Valkey), a few GetEmbeddings answered locally and forwarded for
known reasons, other methods forwarded; `/metrics` scraped and parsed by prometheus_client's
parser, every count asserted exactly, the local latency histogram's count equal to the local
calls, and the forwarded GetEmbeddings equal to those the Python server counted."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persona.v1 import service_pb2 as pb

from services.store.records import vector_key
from services.store.vectors import VectorStore
from tests.front.conftest import Front, scrape, store_address, stub, value
from tests.serving.support import DB, DIM, V1, V2, Running

pytestmark = pytest.mark.integration

SERVICE = "persona.v1.UserEmbeddingService"
NEARLINE = pb.VECTOR_PART_NEARLINE
REASONS = ["invalid", "auth", "dim_unknown", "version", "part_or_head", "fallback",
           "scores_rescore", "short_term_state", "head_unverified", "head_loading", "record",
           "store_error", "redirect", "other"]  # fmt: skip


def code_of(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def test_metrics_count_the_calls(
    start_front: Callable[..., Front], running: Running, vstore: VectorStore
) -> None:
    front = start_front(running.server.port, store_address(vstore), "-db", str(DB),
                        "-version-cache", "0s", "-metrics-listen", "127.0.0.1:0")  # fmt: skip
    samples, ctype = scrape(front)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert value(samples, "persona_front_dim_known") == 0
    assert value(samples, "persona_front_local_request_seconds_count") == 0
    s = stub(front.channel)

    def ask(**kw: object) -> str:
        return code_of(lambda: s.GetEmbeddings(pb.GetEmbeddingsRequest(**kw), timeout=10))

    # forwarded: the dimension is not known yet (this teaches it, and that V1 has no head)
    assert ask(user_ids=["u1"]) == "OK"
    # local: 4 found, 2 not found, all nearline (a default part: V1 is known to have no head)
    assert ask(user_ids=["u1", "nobody", "u2"], part=NEARLINE) == "OK"
    assert ask(user_ids=["u3", "u3"], history_depth=1) == "OK"
    assert ask(user_ids=["gone"], part=NEARLINE) == "OK"
    # forwarded: invalid (twice), an unknown version, the population prior for a missing user
    invalid = [ask(), ask(user_ids=["u1"], history_depth=9)]
    version = ask(user_ids=["u1"], model_version="nope")
    assert ask(user_ids=["u1", "gone"], fallback=pb.FALLBACK_POPULATION_PRIOR) == "OK"
    # and whether V2 has a head is not known yet
    assert ask(user_ids=["u1"], model_version=V2, part=pb.VECTOR_PART_COMBINED) == "OK"
    # other methods: always forwarded
    for _ in range(2):
        s.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    health = health_pb2_grpc.HealthStub(front.channel)
    health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    unknown = code_of(
        lambda: front.channel.unary_unary("/persona.v1.Nothing/Here")(b"", timeout=10)
    )
    assert unknown == "UNIMPLEMENTED"

    samples, _ = scrape(front)
    local, forwarded = 3, 6
    assert value(samples, "persona_front_get_embeddings_total", outcome="local") == local
    assert value(samples, "persona_front_get_embeddings_total", outcome="forwarded") == forwarded
    want_reasons = {"dim_unknown": 1, "invalid": 2, "version": 1, "fallback": 1, "part_or_head": 1}
    for reason in REASONS:
        got = value(samples, "persona_front_get_embeddings_forwarded_total", reason=reason)
        assert got == want_reasons.get(reason, 0), reason
    rows = {(st, part): 0 for st in ("found", "not_found")
            for part in ("nearline", "combined", "short_term")}  # fmt: skip
    rows["found", "nearline"], rows["not_found", "nearline"] = 4, 2
    for (st, part), n in rows.items():
        assert value(samples, "persona_front_embeddings_total", status=st, part=part) == n
    # the histogram: every local call, none of the forwarded ones; cumulative buckets
    assert value(samples, "persona_front_local_request_seconds_count") == local
    assert value(samples, "persona_front_local_request_seconds_bucket", le="+Inf") == local
    assert 0 < value(samples, "persona_front_local_request_seconds_sum") < 10
    buckets = sorted(
        (float(dict(k[1])["le"]), v) for k, v in samples.items()
        if k[0] == "persona_front_local_request_seconds_bucket"
    )  # fmt: skip
    assert buckets[0][0] == 0.0001 and buckets[-2][0] == 1.0 and len(buckets) == 16
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    # forwarded calls by method and code
    calls = {k: v for k, v in samples.items() if k[0] == "persona_front_forwarded_requests_total"}
    codes: dict[str, int] = {"OK": 3}
    for c in (*invalid, version):
        codes[c] = codes.get(c, 0) + 1
    want = {(SERVICE, "GetEmbeddings", c): n for c, n in codes.items()}
    want[SERVICE, "GetModelInfo", "OK"] = 2
    want["grpc.health.v1.Health", "Check", "OK"] = 1
    want["other", "other", "UNIMPLEMENTED"] = 1
    got = {(dict(k[1])["service"], dict(k[1])["method"], dict(k[1])["code"]): v
           for k, v in calls.items()}  # fmt: skip
    assert got == want
    for kind in ("timeout", "unavailable", "error", "redirect"):
        assert value(samples, "persona_front_store_errors_total", kind=kind) == 0
    for outcome in ("ok", "error"):
        assert value(samples, "persona_front_store_slot_map_relearns_total", outcome=outcome) == 0
    assert value(samples, "persona_front_dim_known") == 1
    # the Python server saw exactly the forwarded GetEmbeddings, and the front agrees at exit
    upstream = sum(
        running.sample("persona_serving_requests_total", service=SERVICE, method="GetEmbeddings",
                       code=c)
        for c in codes
    )  # fmt: skip
    assert upstream == forwarded
    assert front.counts() == (local, forwarded)


def test_store_error_counted(
    start_front: Callable[..., Front], running: Running, vstore: VectorStore
) -> None:
    """An error reply (WRONGTYPE: a string where the vector list should be): forwarded, so
    the error is Python's own, and counted as a store error of kind "error"."""
    key = vector_key("wrongtype", V1)
    vstore.client.set(key, b"not a list")
    try:
        front = start_front(running.server.port, store_address(vstore), "-db", str(DB), "-dim",
                            str(DIM), "-metrics-listen", "127.0.0.1:0")  # fmt: skip
        req = pb.GetEmbeddingsRequest(user_ids=["u1", "wrongtype"], part=NEARLINE)
        got = code_of(lambda: stub(front.channel).GetEmbeddings(req, timeout=10))
        want = code_of(lambda: running.stub.GetEmbeddings(req, timeout=10))
        assert got == want != "OK"
        samples, _ = scrape(front)
    finally:
        vstore.client.delete(key)
    assert value(samples, "persona_front_dim_known") == 1
    assert value(samples, "persona_front_get_embeddings_total", outcome="forwarded") == 1
    assert value(samples, "persona_front_get_embeddings_total", outcome="local") == 0
    assert value(samples, "persona_front_get_embeddings_forwarded_total", reason="store_error") == 1
    for kind, n in (("error", 1), ("timeout", 0), ("unavailable", 0), ("redirect", 0)):
        assert value(samples, "persona_front_store_errors_total", kind=kind) == n
    assert value(samples, "persona_front_local_request_seconds_count") == 0
    key_ = (SERVICE, "GetEmbeddings", got)
    assert value(samples, "persona_front_forwarded_requests_total", service=key_[0],
                 method=key_[1], code=key_[2]) == 1  # fmt: skip
