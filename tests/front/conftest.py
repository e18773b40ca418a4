"""Fixtures of the Go front's tests: the binary (front/go/cmd/persona-front, built in GOPATH
mode beside the Go client's toolchain checks) and a running front before a test's server."""

from __future__ import annotations

import contextlib
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.clients.conftest import holder, running, serve, users
from tests.clients.conftest import vstore as vstore
from tests.go_support import build, front_bin, go_env, launch_front, stop_front

if TYPE_CHECKING:
    from services.store.vectors import VectorStore
    from tests.serving.support import Running

__all__ = [
    "Front",
    "both",
    "build",
    "close",
    "counts",
    "front_bin",
    "go_env",
    "holder",
    "plain",
    "request_grid",
    "running",
    "serve",
    "start_front",
    "store_address",
    "stub",
    "users",
    "vstore",
    "walk",
]  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]


class Front:
    """A started persona-front: its process, address and channel."""

    def __init__(self, proc: subprocess.Popen[str], info: dict[str, Any]) -> None:
        self.proc = proc
        self.address: str = info["listen"]
        self.cluster: bool = info["cluster"]
        self.metrics: str | None = info.get("metrics")  # with -metrics-listen: HOST:PORT
        self.tls: str | None = info.get("tls")  # the listener's: plaintext, TLS or mTLS
        self.channel = grpc.insecure_channel(self.address)
        self.stderr: str | None = None

    def stop(self) -> str:
        """SIGTERM, wait (kill after 10 s); the process's stderr. Idempotent."""
        if self.stderr is None:
            self.channel.close()
            self.stderr = stop_front(self.proc)
        return self.stderr

    def counts(self) -> tuple[int, int]:
        """Stops the front: (GetEmbeddings answered locally, forwarded)."""
        err = self.stop()
        assert "local " in err, err
        local, forwarded = err.split("local ")[1].split(")")[0].split(", forwarded ")
        return int(local), int(forwarded)


@pytest.fixture
def start_front(front_bin: Path) -> Iterator[Callable[..., Front]]:
    """`start_front(upstream_port, store_url, *flags)` -> a running Front; every one stopped
    after the test, whatever its outcome."""
    started: list[Front] = []

    def start(upstream_port: int, store: str, *flags: str) -> Front:
        proc, info = launch_front(front_bin, upstream_port, store, *flags)
        try:
            front = Front(proc, info)
        except BaseException:
            stop_front(proc)
            raise
        started.append(front)
        return front

    try:
        yield start
    finally:
        with contextlib.ExitStack() as stops:  # every front stopped, even if one stop raises
            for f in started:
                stops.callback(f.stop)


def store_address(vstore: VectorStore) -> str:
    """`host:port` of the test's single Valkey (db `tests.serving.support.DB`)."""
    kw = vstore.client.get_connection_kwargs()
    return f"{kw['host']}:{kw['port']}"


def stub(ch: grpc.Channel) -> Any:
    return pb_grpc.UserEmbeddingServiceStub(ch)


def plain(resp: pb.GetEmbeddingsResponse) -> pb.GetEmbeddingsResponse:
    """The answer without its `age_seconds` columns (they follow the clock)."""
    out = pb.GetEmbeddingsResponse()
    out.CopyFrom(resp)
    del out.meta.age_seconds[:]
    del out.history_meta.age_seconds[:]
    return out


def both(front: Front, upstream: Any, req: pb.GetEmbeddingsRequest) -> pb.GetEmbeddingsResponse:
    """The front's answer, asserted equal to the Python server's (`upstream`, a Running) and
    not empty (an empty answer must not match an empty answer by accident)."""
    got = plain(stub(front.channel).GetEmbeddings(req, timeout=10))
    want = plain(upstream.stub.GetEmbeddings(req, timeout=10))
    assert got == want, f"request {req}"
    assert len(got.statuses) == len(req.user_ids) and got.dim > 0 and got.vectors
    return got


def counts(front: Front) -> tuple[int, dict[str, int]]:
    """(GetEmbeddings answered locally, forwarded ones by reason) from /metrics."""
    local, reasons = -1, {}
    for (name, labels), v in scrape(front)[0].items():
        lab = dict(labels)
        if name == "persona_front_get_embeddings_total" and lab["outcome"] == "local":
            local = int(v)
        if name == "persona_front_get_embeddings_forwarded_total":
            reasons[lab["reason"]] = int(v)
    return local, reasons


def close(
    front: Front, upstream: Running, req: pb.GetEmbeddingsRequest, scores_tol: float | None = None
) -> pb.GetEmbeddingsResponse:
    """The front's answer: vectors within 1e-5 of the Python server's (float16: within its
    rounding of them), scores within `scores_tol` (None: equal), every other field equal."""
    got = plain(stub(front.channel).GetEmbeddings(req, timeout=10))
    want = plain(upstream.stub.GetEmbeddings(req, timeout=10))
    f16 = req.encoding == pb.VECTOR_ENCODING_FLOAT16
    dt = "<f2" if f16 else "<f4"
    near = {"vectors": 1e-5} if scores_tol is None else {"vectors": 1e-5, "scores": scores_tol}
    same = pb.GetEmbeddingsResponse()
    same.CopyFrom(got)
    for field, tol in near.items():
        a = np.frombuffer(getattr(got, field), dt).astype(np.float32)
        b = np.frombuffer(getattr(want, field), dt).astype(np.float32)
        assert a.shape == b.shape and (field != "vectors" or len(a) > 0), f"{field}, {req}"
        np.testing.assert_allclose(a, b, rtol=2**-10 if f16 else 0, atol=tol, err_msg=str(req))
        setattr(same, field, getattr(want, field))
    assert same == want, f"request {req}"
    return got


def walk(
    front: Front, reqs: list[pb.GetEmbeddingsRequest],
    answer: Callable[[pb.GetEmbeddingsRequest], object],
    is_local: Callable[[pb.GetEmbeddingsRequest], bool],
) -> tuple[int, dict[str, int]]:  # fmt: skip
    """Each request `answer`ed in turn, the front's counts checked after each: one more local
    answer where `is_local`, else one more forwarded for a user needing the window; the
    counts at the end."""
    local, reasons = counts(front)
    for req in reqs:
        answer(req)
        now_local, now_reasons = counts(front)
        if is_local(req):
            assert (now_local, now_reasons) == (local + 1, reasons), f"request {req}"
        else:
            why = "short_term_state"
            assert now_local == local and now_reasons == {**reasons, why: reasons[why] + 1}, (
                f"request {req}: {now_reasons}"
            )
        local, reasons = now_local, now_reasons
    return local, reasons


def scrape(front: Front) -> tuple[dict[tuple[str, frozenset[tuple[str, str]]], float], str]:
    """(sample name, labels) -> value, and the Content-Type of GET /metrics."""
    assert front.metrics, "no metrics address in the startup line"
    with urllib.request.urlopen(f"http://{front.metrics}/metrics", timeout=10) as r:
        ctype, text = r.headers["Content-Type"], r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, key
            out[key] = s.value
    return out, ctype


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A registry with one tiny trained version (its short-term and outcome heads), shared by
    the modules that serve it (tests that damage a version copy it first)."""
    from tests.refresh.conftest import tiny_version

    root: Path = tmp_path_factory.mktemp("models")
    return root, tiny_version(root)


def request_grid(
    mixes: list[list[str]], version: str, depths: tuple[int, ...]
) -> list[pb.GetEmbeddingsRequest]:
    """Every GetEmbeddings the head tests send: each mix of ids under every part, encoding,
    history depth of `depths`, with and without scores, unpinned and pinned to `version`."""
    return [
        pb.GetEmbeddingsRequest(
            user_ids=ids, part=part, encoding=enc, history_depth=depth, include_scores=scores,
            model_version=v,
        )
        for ids in mixes
        for part in (pb.VECTOR_PART_UNSPECIFIED, pb.VECTOR_PART_COMBINED,
                     pb.VECTOR_PART_SHORT_TERM, pb.VECTOR_PART_NEARLINE)
        for enc in (pb.VECTOR_ENCODING_UNSPECIFIED, pb.VECTOR_ENCODING_FLOAT16)
        for depth in depths
        for scores in (False, True)
        for v in ("", version)
    ]  # fmt: skip
