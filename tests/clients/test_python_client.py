"""The Python client (clients/python, `persona_client`) against a live server: embeddings
and lookalikes as numpy arrays, history, float16, the prior, a bearer token; the retry
policy of its gRPC service config against a server that fails on purpose; and the package
installed alone into a fresh venv, without torch, torchrec or faiss."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc
from persona_client import (
    FALLBACK_PRIOR,
    FOUND,
    NOT_FOUND,
    ClientConfig,
    PersonaClient,
    score_columns,
    service_config,
)

from services.index.holder import IndexHolder
from services.store.vectors import VectorStore
from tests.serving.support import DIM, V1, V2, Running, unit

ROOT = Path(__file__).resolve().parents[2]


def _client(r: Running, **kw: object) -> PersonaClient:
    return PersonaClient(ClientConfig(f"127.0.0.1:{r.server.port}", timeout_s=5, **kw))  # type: ignore[arg-type]


@pytest.mark.integration
def test_embeddings_and_lookalikes_from_a_live_server(
    running: Running, users: dict[str, dict[str, np.ndarray]]
) -> None:
    ids = ["u3", "nobody", "u0", "u3"]
    with _client(running) as client:
        client.wait_ready(10)
        emb = client.get_embeddings(ids)
        assert emb.model_version == V1 and emb.user_ids == tuple(ids)
        assert emb.status.tolist() == [FOUND, NOT_FOUND, FOUND, FOUND]
        assert emb.vectors.shape == (4, DIM) and emb.vectors.dtype == np.float32
        np.testing.assert_array_equal(emb.vectors[0], users[V1]["u3"])
        assert not emb.vectors[1].any() and emb.meta.n_events.tolist() == [13, 0, 10, 13]
        assert (emb.meta.age_seconds[emb.found] >= 5).all() and emb.meta.age_seconds[1] == 0
        assert set(emb.as_dict()) == {"u3", "u0"}

        half = client.get_embeddings(["u1"], model_version=V2, encoding="float16")
        assert half.vectors.dtype == np.float16 and half.model_version == V2
        np.testing.assert_allclose(half.vectors[0], users[V2]["u1"], rtol=2e-3, atol=2e-3)

        prior = client.get_embeddings(["new-user"], fallback_prior=True)
        assert prior.status.tolist() == [FALLBACK_PRIOR]
        vs = list(users[V1].values())  # mean direction at the mean length
        want = unit(np.mean([unit(v) for v in vs], axis=0)) * np.mean(np.linalg.norm(vs, axis=1))
        np.testing.assert_allclose(prior.vectors[0], want, atol=1e-5)

        near = client.find_lookalikes(user_id="u4", k=5)
        assert near.user_ids[0] == "u4" and len(near.user_ids) == 5
        assert near.scores[0] == pytest.approx(1.0) and (np.diff(near.scores) <= 0).all()
        seeds = client.find_lookalikes(seeds=["u1", "u2", "gone"], k=3, exclude_seeds=True)
        assert (seeds.seeds_used, seeds.seeds_missing) == (2, 1)
        assert not {"u1", "u2"} & set(seeds.user_ids)
        by_vec = client.find_lookalikes(vector=users[V1]["u9"], k=1)
        assert by_vec.user_ids == ["u9"]
        info = client.model_info()
        assert info.active_version == V1 and info.dim == DIM

        with pytest.raises(grpc.RpcError) as ei:
            client.find_lookalikes(user_id="nobody", k=3)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.integration
def test_history_rows_per_user(running: Running, vstore: VectorStore) -> None:
    from services.store.records import StoredVector
    from tests.serving.support import NOW_MS

    vecs = [np.full(DIM, float(i + 1), np.float32) for i in range(3)]
    vstore.put_batch([StoredVector("hc", V1, v, NOW_MS + i, 4, i + 1) for i, v in enumerate(vecs)])
    with _client(running) as client:
        emb = client.get_embeddings(["u5", "hc", "nobody"], history_depth=2)
    assert emb.history_counts.tolist() == [0, 2, 0]
    np.testing.assert_array_equal(emb.history(1), np.stack([vecs[1], vecs[0]]))
    assert emb.history(0).shape == (0, DIM)
    assert emb.history_meta.window_version.tolist() == [2, 1]


_COLUMNS = [("(any)", 3_600_000), ("type=click", 3_600_000), ("(any)", 86_400_000)]


@pytest.mark.integration
def test_outcome_scores(running: Running, vstore: VectorStore) -> None:
    """include_scores: (N, S) scores in the request's encoding, NaN for a row without any,
    history rows' scores, the columns named from GetModelInfo; none without the flag."""
    from services.store.records import StoredVector
    from tests.serving.support import NOW_MS

    cols = [{"outcome": o, "horizon_ms": h, "calibrated": True} for o, h in _COLUMNS]
    vstore.set_score_columns(V2, json.dumps({"columns": cols}))
    sc = [np.array([0.25, 0.5, 0.75], np.float32) * (i + 1) / 2 for i in range(2)]
    vecs = [np.full(DIM, float(i + 1), np.float32) for i in range(2)]
    vstore.put_batch(
        [StoredVector("sc", V2, v, NOW_MS + i, 4, i + 1, sc[i]) for i, v in enumerate(vecs)]
    )
    ids = ["sc", "nobody", "u1"]  # u1: a V2 vector written without scores
    with _client(running) as client:
        plain = client.get_embeddings(ids, model_version=V2)
        assert plain.scores.shape == (3, 0) and plain.history_scores.shape == (0, 0)
        emb = client.get_embeddings(ids, model_version=V2, include_scores=True, history_depth=1)
        assert emb.scores.shape == (3, 3) and emb.scores.dtype == np.float32
        np.testing.assert_array_equal(emb.scores[0], sc[1])  # exact in float16
        assert np.isnan(emb.scores[1:]).all()
        assert emb.history_counts.tolist() == [1, 0, 0]
        np.testing.assert_array_equal(emb.history_scores, sc[:1])
        half = client.get_embeddings(["sc"], model_version=V2, include_scores=True,
                                     encoding="float16")  # fmt: skip
        assert half.scores.dtype == np.float16
        np.testing.assert_array_equal(half.scores[0], sc[1])
        info = client.model_info()
        (outcome, horizon), *_ = _COLUMNS
        pages = list(client.audience(outcome, horizon, min_score=0.0, model_version=V2,
                                     page_size=1))  # fmt: skip
        assert pages == [(["sc"], [0.25])]  # u1 has no scores, so no place in an audience
        assert list(client.audience(outcome, horizon, top_n=1, model_version=V2)) == pages
        with pytest.raises(ValueError):
            next(client.audience(outcome, horizon))
    assert score_columns(info, V2) == _COLUMNS and score_columns(info, V1) == []
    with pytest.raises(KeyError):
        score_columns(info, "v-none")


@pytest.mark.integration
def test_bearer_token(
    serve: Callable[..., Running], vstore: VectorStore, holder: IndexHolder, users: object
) -> None:
    r = serve(vstore, holder, auth_token="client-token")
    with _client(r) as bare, pytest.raises(grpc.RpcError) as ei:
        bare.get_embeddings(["u1"])
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with _client(r, token="client-token") as client:
        client.wait_ready(10)  # health needs no token
        assert client.get_embeddings(["u1"]).status.tolist() == [FOUND]


class _Flaky(service_pb2_grpc.UserEmbeddingServiceServicer):
    """Fails the first `fail` calls with `code`, then answers; counts the attempts."""

    def __init__(self, fail: int, code: grpc.StatusCode, delay_s: float = 0.0) -> None:
        self.fail, self.code, self.delay_s, self.calls = fail, code, delay_s, 0
        self.lock = threading.Lock()

    def GetModelInfo(self, request: object, context: grpc.ServicerContext) -> object:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay_s)
        if n <= self.fail:
            context.abort(self.code, f"attempt {n} fails on purpose")
        return pb.GetModelInfoResponse(active_version="v-flaky", dim=4)


@pytest.fixture
def flaky() -> Iterator[Callable[..., tuple[_Flaky, str]]]:
    servers: list[grpc.Server] = []

    def start(fail: int, code: grpc.StatusCode, delay_s: float = 0.0) -> tuple[_Flaky, str]:
        servicer = _Flaky(fail, code, delay_s)
        server = grpc.server(futures.ThreadPoolExecutor(4))
        service_pb2_grpc.add_UserEmbeddingServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    try:
        yield start
    finally:
        for s in servers:
            s.stop(0)


def test_unavailable_is_retried_by_the_service_config(flaky: Callable[..., tuple]) -> None:
    servicer, target = flaky(2, grpc.StatusCode.UNAVAILABLE)
    with PersonaClient(ClientConfig(target, max_attempts=3)) as client:
        assert client.model_info().active_version == "v-flaky"
    assert servicer.calls == 3  # two failures, retried by gRPC itself, then the answer

    servicer, target = flaky(5, grpc.StatusCode.UNAVAILABLE)
    client = PersonaClient(ClientConfig(target, max_attempts=2))
    with client, pytest.raises(grpc.RpcError) as ei:
        client.model_info()
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls == 2


def test_resource_exhausted_is_not_retried(flaky: Callable[..., tuple]) -> None:
    servicer, target = flaky(1, grpc.StatusCode.RESOURCE_EXHAUSTED)
    client = PersonaClient(ClientConfig(target, max_attempts=5))
    with client, pytest.raises(grpc.RpcError) as ei:
        client.model_info()
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and servicer.calls == 1


def test_the_default_deadline_applies(flaky: Callable[..., tuple]) -> None:
    """Sent with each call: a service-config `timeout` misfires in grpcio (see config.py)."""
    cfg = ClientConfig("unused:1", timeout_s=0.1)
    assert "timeout" not in json.loads(service_config(cfg))["methodConfig"][0]
    _, target = flaky(0, grpc.StatusCode.OK, delay_s=1.5)
    with PersonaClient(replace(cfg, target=target)) as client:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            client.model_info()
        assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 1.2  # at the 0.1 s deadline, not at the 1.5 s answer
        assert client.model_info(timeout_s=5).dim == 4  # a call's own deadline wins


_CHECK = """
import json, sys
from importlib import metadata
import numpy as np
from persona_client import ClientConfig, PersonaClient
names = {d.metadata["Name"].lower() for d in metadata.distributions()}
with PersonaClient(ClientConfig(sys.argv[1], timeout_s=10)) as c:
    emb = c.get_embeddings(["u1", "nobody"])
    near = c.find_lookalikes(user_id="u1", k=3)
print(json.dumps({"dists": sorted(names), "status": emb.status.tolist(),
                  "u1": emb.vectors[0].tolist(), "near": near.user_ids}))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_installs_alone_in_a_fresh_venv_without_torch(
    running: Running, users: dict[str, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    """`pip install clients/python` into a new venv (no system site-packages) pulls grpcio,
    protobuf and numpy, never torch, torchrec or faiss; the installed client then talks to
    the live server."""
    venv, src = tmp_path / "venv", tmp_path / "persona-client"
    # a copy: building in place would leave build/ and *.egg-info in the checkout
    skip = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT / "clients" / "python", src, ignore=skip)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    pip = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if pip.returncode != 0 and "No matching distribution" in pip.stderr:
        pytest.skip(f"the package index cannot serve the client's dependencies: {pip.stderr}")
    assert pip.returncode == 0, pip.stderr
    out = subprocess.run(
        [py, "-c", _CHECK, f"127.0.0.1:{running.server.port}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert {"persona-client", "grpcio", "protobuf", "numpy"} <= set(got["dists"])
    heavy = {d for d in got["dists"] if d.startswith(("torch", "fbgemm", "faiss"))}
    assert not heavy, heavy
    assert got["status"] == [FOUND, NOT_FOUND] and got["near"][0] == "u1"
    np.testing.assert_array_equal(np.float32(got["u1"]), users[V1]["u1"])


class _OnesHead:
    """A stand-in short-term head (client plumbing only; tests/refresh/test_refresh_shortterm
    serves real trained heads): delta = the number of new events in every component."""

    out_dim, max_events, row_dim = DIM, 4, 1

    def event_rows(self, events: list) -> np.ndarray:
        return np.ones((len(events), 1), np.float32)

    def delta_rows(self, z: np.ndarray, u: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return np.repeat(lengths.astype(np.float32)[:, None], DIM, axis=1)

    def scores(self, z: np.ndarray) -> None:
        return None  # no outcome heads: stored scores are served


@pytest.mark.integration
def test_vector_parts(vstore: VectorStore, holder: IndexHolder) -> None:
    """part: nearline, short-term, combined (the default with a head); what each row is made
    of (newest_event_ms, short_term_events) in `Embeddings.meta`."""
    from prometheus_client import CollectorRegistry

    from contract.events import Event
    from services.config import WindowConfig
    from services.serving.metrics import serving_metrics
    from services.serving.server import ServingServer
    from services.store.records import StoredVector
    from services.store.windows import WindowStore
    from tests.serving.support import BASE, NOW_MS
    from tests.store_support import UserUpdate, apply_events

    class Heads:
        def head(self, version: str) -> _OnesHead:
            return _OnesHead()

    t = NOW_MS - 1000
    windows = WindowStore(vstore.client, WindowConfig())
    evs = [Event("pt", f"pt-{k}", t + k, "view") for k in range(3)]
    apply_events(windows, [UserUpdate("pt", 0, list(enumerate(evs)))])
    near = np.full(DIM, 0.5, np.float32)
    # window version 0: encoded before the three events were applied (meta `v` is 1 now)
    vstore.put_batch([StoredVector("pt", V1, near, NOW_MS, 1, 0, None, (t, "pt-0"))])
    server = ServingServer(BASE, vstore, holder, serving_metrics(CollectorRegistry()),
                           heads=Heads())  # fmt: skip
    server.start()
    try:
        with PersonaClient(ClientConfig(f"127.0.0.1:{server.port}", timeout_s=5)) as client:
            got = {p: client.get_embeddings(["pt", "nobody"], part=p)
                   for p in ("default", "nearline", "short_term", "combined")}  # fmt: skip
    finally:
        server.stop(grace_s=0)
        windows.close()
    assert {p: e.part for p, e in got.items()} == {
        "default": "combined", "nearline": "nearline", "short_term": "short_term",
        "combined": "combined",
    }  # fmt: skip
    np.testing.assert_array_equal(got["nearline"].vectors[0], near)
    np.testing.assert_array_equal(got["short_term"].vectors[0], np.full(DIM, 2.0))
    np.testing.assert_array_equal(got["default"].vectors[0], near + 2)
    assert got["default"].meta.short_term_events.tolist() == [2, 0]
    assert got["default"].meta.newest_event_ms.tolist() == [t + 2, 0]
    assert got["nearline"].meta.newest_event_ms.tolist() == [t, 0]  # the marker's
    assert got["nearline"].meta.short_term_events.tolist() == [0, 0]
