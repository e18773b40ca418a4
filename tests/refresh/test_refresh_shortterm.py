"""The short-term head served (issue #17): events after the last refresh reach GetEmbeddings.

The refresher writes each vector with the marker of the newest event it folded in (LAYOUT.md,
layout 3); serving reads the events after the marker in the same round trip and returns
nearline + the version's head delta over them. Real Valkey, real broker, real tiny trained
versions (each with its head): an event applied after the refresh changes the served vector
by exactly the head's delta; right after a refresh the combined vector is the nearline one
(the refresher's events are never folded again); the three parts; a cutover switches the
head with the vectors; a version without a head serves nearline; an event produced to the
events topic and applied by the ingest consumer is served.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc
from prometheus_client import CollectorRegistry

from encoder.shortterm import FILE, PARITY_FILE, ShortTermHead
from services.config import KafkaConfig, WindowConfig
from services.index.holder import IndexHolder
from services.ingest.consumer import Ingestor
from services.ingest.metrics import ingest_metrics
from services.ingest.produce import produce_events
from services.serving.metrics import serving_metrics
from services.serving.server import ServingServer
from services.serving.shortterm import RegistryHeads
from tests.refresh.conftest import Env
from tests.refresh.support import add_events
from tests.serving.support import BASE

pytestmark = pytest.mark.integration
Stub = service_pb2_grpc.UserEmbeddingServiceStub


@contextmanager
def _served(
    env: Env, models: Path, probe: str = "st000", registry: CollectorRegistry | None = None
) -> Iterator[Stub]:
    """A server over `env` (its dimension: `probe`'s stored vector's; its metrics in
    `registry`)."""
    dim = next(iter(env.vectors.get_batch([probe], env.v1)[0])).vector.size
    metrics = serving_metrics(registry or CollectorRegistry())
    server = ServingServer(replace(BASE, dim=dim), env.vectors, IndexHolder(), metrics,
                           heads=RegistryHeads(models))  # fmt: skip
    server.start()
    channel = grpc.insecure_channel(f"localhost:{server.port}")
    try:
        yield service_pb2_grpc.UserEmbeddingServiceStub(channel)
    finally:
        channel.close()
        server.stop(grace_s=0)


def _get(
    stub: Stub, ids: list[str], part: pb.VectorPart = pb.VECTOR_PART_UNSPECIFIED, version: str = ""
) -> tuple[np.ndarray, pb.GetEmbeddingsResponse]:
    resp = stub.GetEmbeddings(
        pb.GetEmbeddingsRequest(user_ids=ids, part=part, model_version=version)
    )
    return np.frombuffer(resp.vectors, "<f4").reshape(len(ids), resp.dim), resp


def _nearline(env: Env, version: str, ids: list[str]) -> np.ndarray:
    return np.stack([vs[0].vector for vs in env.vectors.get_batch(ids, version)])


def _after(env: Env, users: list[str], k: int) -> list[list]:
    """The last k events of each user's window, as the store holds them."""
    return [w.events[-k:] for w in env.windows.read(users)]


def test_new_events_reach_the_served_vector_once(env: Env) -> None:
    users = [f"st{i:03d}" for i in range(12)]
    add_events(env.windows, users, 4, seed=31)
    env.refresher().run(threading.Event(), until_idle=True)
    v1 = env.v1
    head = ShortTermHead.load(env.models, v1)
    assert head is not None, "a version trained by default carries its head"
    near = _nearline(env, v1, users)
    newest = [w.events[-1].ts_ms for w in env.windows.read(users)]
    with _served(env, env.models) as stub:
        # 1. right after the refresh: combined == nearline, the newest event is the marker's
        got, resp = _get(stub, users)
        assert resp.part == pb.VECTOR_PART_COMBINED and resp.model_version == v1
        np.testing.assert_array_equal(got, near)
        assert list(resp.meta.short_term_events) == [0] * len(users)
        assert list(resp.meta.newest_event_ms) == newest

        # 2. one new event for the first half, two for one user: nearline + head.delta
        add_events(env.windows, users[:6], 1, seed=32, offset0=1000)
        add_events(env.windows, users[:1], 1, seed=33, offset0=2000)
        new = _after(env, users[:6], 1)
        new[0] = _after(env, users[:1], 2)[0]
        want = near.copy()
        want[:6] += head.delta(near[:6], new)
        got, resp = _get(stub, users)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        assert not np.allclose(got[:6], near[:6], atol=1e-4), "the events changed the vectors"
        np.testing.assert_array_equal(got[6:], near[6:])
        assert list(resp.meta.short_term_events) == [2] + [1] * 5 + [0] * 6
        assert list(resp.meta.newest_event_ms)[:6] == [evs[-1].ts_ms for evs in new]
        assert list(resp.meta.newest_event_ms)[6:] == newest[6:]
        assert list(resp.meta.computed_at_ms) == [
            vs[0].computed_at_ms for vs in env.vectors.get_batch(users, v1)
        ], "computed_at stays the nearline vector's"

        # 3. the parts: nearline alone, the short-term part alone, combined named
        nl, r_nl = _get(stub, users, pb.VECTOR_PART_NEARLINE)
        np.testing.assert_array_equal(nl, near)
        assert r_nl.part == pb.VECTOR_PART_NEARLINE and not any(r_nl.meta.short_term_events)
        st, r_st = _get(stub, users, pb.VECTOR_PART_SHORT_TERM)
        np.testing.assert_allclose(st, want - near, rtol=0, atol=1e-6)
        assert r_st.part == pb.VECTOR_PART_SHORT_TERM and not st[6:].any()
        co, r_co = _get(stub, [*users[:2], "nobody", users[0]], pb.VECTOR_PART_COMBINED)
        np.testing.assert_allclose(co, [want[0], want[1], np.zeros_like(want[0]), want[0]],
                                   rtol=0, atol=1e-6)  # fmt: skip
        assert list(r_co.meta.short_term_events) == [2, 1, 0, 2]
        assert r_co.statuses[2] == pb.EMBEDDING_STATUS_NOT_FOUND
        hist = stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=users[:2], history_depth=1))
        assert hist.part == pb.VECTOR_PART_COMBINED and not any(hist.history_meta.short_term_events)

        # scores follow the combined vector where the head moved it, stored ones elsewhere
        sc = stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=users, include_scores=True))
        scores = np.frombuffer(sc.scores, "<f4").reshape(len(users), sc.n_scores)
        fresh = head.scores(want[:6])
        assert fresh is not None and fresh.shape[1] == sc.n_scores
        np.testing.assert_allclose(scores[:6], fresh, rtol=0, atol=1e-6)
        stored = env.vectors.get_batch(users[6:], v1)
        np.testing.assert_allclose(scores[6:], [vs[0].scores for vs in stored], atol=1e-3)
        assert not np.allclose(scores[:6], head.scores(near[:6]), atol=1e-4)

        # 4. the next refresh folds those events into the nearline vector: none folded twice
        env.refresher().run(threading.Event(), until_idle=True)
        near2 = _nearline(env, v1, users)
        got, resp = _get(stub, users)
        np.testing.assert_array_equal(got, near2)
        assert not any(resp.meta.short_term_events)
        assert not np.allclose(near2[:6], near[:6], atol=1e-4)


def test_cutover_switches_the_head_and_a_version_without_one_serves_nearline(
    env: Env, tmp_path: Path
) -> None:
    users = [f"st{i:03d}" for i in range(8)]
    add_events(env.windows, users, 4, seed=41)
    env.refresher().run(threading.Event(), until_idle=True)
    env.cut_over_to_v2()
    add_events(env.windows, users[:4], 1, seed=42, offset0=1000)  # after every refresh
    new = _after(env, users[:4], 1)
    heads = {v: ShortTermHead.load(env.models, v) for v in (env.v1, env.v2)}
    near = {v: _nearline(env, v, users) for v in (env.v1, env.v2)}
    served = {}
    with _served(env, env.models) as stub:
        for pinned, ver in (("", env.v2), (env.v1, env.v1)):
            head = heads[ver]
            assert head is not None
            got, resp = _get(stub, users, version=pinned)
            assert resp.model_version == ver and resp.part == pb.VECTOR_PART_COMBINED
            np.testing.assert_allclose(got[:4], near[ver][:4] + head.delta(near[ver][:4], new),
                                       rtol=0, atol=1e-6)  # fmt: skip
            np.testing.assert_array_equal(got[4:], near[ver][4:])
            served[ver] = got
    old_head = heads[env.v1]
    assert old_head is not None  # v1's head on v2's vectors is not what v2 serves
    other = near[env.v2][:4] + old_head.delta(near[env.v2][:4], new)
    assert not np.allclose(served[env.v2][:4], other, atol=1e-4)

    # the same registry without v2's head files: v2 is served nearline, short-term refused
    bare = tmp_path / "models"
    shutil.copytree(env.models, bare, symlinks=True)
    for name in (FILE, PARITY_FILE):
        (bare / env.v2 / name).unlink()
    with _served(env, bare) as stub:
        got, resp = _get(stub, users)
        assert resp.model_version == env.v2 and resp.part == pb.VECTOR_PART_NEARLINE
        np.testing.assert_array_equal(got, near[env.v2])
        assert not any(resp.meta.short_term_events)
        with pytest.raises(grpc.RpcError) as err:
            _get(stub, users, pb.VECTOR_PART_SHORT_TERM)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        got, resp = _get(stub, users, version=env.v1)  # v1 kept its head
        assert resp.part == pb.VECTOR_PART_COMBINED


def test_an_event_ingested_from_the_topic_reaches_the_served_vector(
    env: Env, make_topic: Callable[..., str]
) -> None:
    """The freshness path end to end: an event produced to the events topic after the
    refresh, applied by the ingest consumer, is in the next GetEmbeddings (no refresh)."""
    users = [f"st{i:03d}" for i in range(4)]
    add_events(env.windows, users, 4, seed=51)
    env.refresher().run(threading.Event(), until_idle=True)
    head = ShortTermHead.load(env.models, env.v1)
    assert head is not None
    near = _nearline(env, env.v1, users)
    last = env.windows.read(users[:1])[0].events[-1]
    ev = replace(last, event_id="from-the-topic", ts_ms=last.ts_ms + 1000)
    kcfg = KafkaConfig(bootstrap=env.bootstrap, topic=make_topic(env.bootstrap, 2, "ev"),
                       group_id=f"g-{uuid.uuid4().hex}")  # fmt: skip
    assert produce_events(kcfg, [ev]) == 1
    ing = Ingestor(kcfg, WindowConfig(), env.windows, ingest_metrics(CollectorRegistry()))
    assert ing.run(threading.Event(), until_idle=True, poll_ms=100).applied == 1
    stored = env.windows.read(users[:1])[0].events[-1]
    assert stored.event_id == "from-the-topic"
    with _served(env, env.models) as stub:
        got, resp = _get(stub, users)
    np.testing.assert_allclose(got[0], near[0] + head.delta(near[:1], [[stored]])[0],
                               rtol=0, atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(got[1:], near[1:])
    assert list(resp.meta.short_term_events) == [1, 0, 0, 0]
    assert resp.meta.newest_event_ms[0] == ev.ts_ms
