"""The served log (issue #18 item 5c): a sample of GetEmbeddings answers on a Kafka topic of
the embedded broker. At rate 1 every answered id is there with the version and computed_at
it was served with; at rate 0 nothing is written (and no producer opened); a full queue
drops and counts, and the call does not wait."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from persona.v1 import service_pb2 as pb
from prometheus_client import CollectorRegistry

from services.common.kafka import producer
from services.config import KafkaConfig
from services.index.holder import IndexHolder
from services.serving.config import ServedLogConfig
from services.serving.embeddings import FOUND, NOT_FOUND, EmbeddingsResult
from services.serving.metrics import ServingMetrics, serving_metrics
from services.serving.served_log import ServedLog
from services.stack import EmbeddedStack
from services.store.records import VectorBatch
from services.store.vectors import VectorStore
from tests.integration.ingest_support import read_topic
from tests.serving.support import V1, V2, Running

pytestmark = pytest.mark.integration
SERVED = "persona_serving_served_log_records_total"


def _no_served_log_thread() -> bool:
    return not any(t.name == "served-log" for t in threading.enumerate())


def _log(topic: str, bootstrap: str, rate: float) -> Callable[[ServingMetrics], ServedLog]:
    cfg = ServedLogConfig(rate=rate, topic=topic)
    return lambda m: ServedLog(cfg, lambda: producer(KafkaConfig(bootstrap=bootstrap)), m)


@pytest.fixture
def bootstrap(stack: EmbeddedStack) -> str:
    return stack.addresses.bootstrap


@pytest.fixture
def serve_logged(
    serve: Callable[..., Running],
    vstore: VectorStore,
    holder: IndexHolder,
    users: dict[str, dict[str, np.ndarray]],
) -> Callable[[Callable[[ServingMetrics], ServedLog]], Running]:
    """Starts a server over the stored users whose served log the given callable builds."""
    return lambda served_log: serve(vstore, holder, served_log=served_log)


def test_rate_1_logs_every_answered_id_with_its_version_and_computed_at(
    bootstrap: str,
    serve_logged: Callable[[Callable[[ServingMetrics], ServedLog]], Running],
    vstore: VectorStore,
    make_topic: Callable[..., str],
) -> None:
    topic = make_topic(bootstrap, 2, "served")
    r = serve_logged(_log(topic, bootstrap, 1.0))
    asked = {V1: ["u1", "u2", "u3", "nobody"], V2: ["u4", "u1"]}
    for version, ids in asked.items():
        r.stub.GetEmbeddings(
            pb.GetEmbeddingsRequest(user_ids=ids, model_version=version),
            metadata=(("x-request-id", f"req-{version}"),),
            timeout=10,
        )
    r.server.stop(grace_s=0)  # the served log sends what it holds, then its thread ends
    assert _no_served_log_thread()
    got = [json.loads(value or b"") for _, _, value, _ in read_topic(bootstrap, topic)]
    want = sum(len(ids) for ids in asked.values())
    assert r.sample(SERVED, outcome="sent") == want
    assert r.sample(SERVED, outcome="dropped") == 0
    by_key = {(g["model_version"], g["user_id"]): g for g in got}
    assert len(got) == len(by_key) == want
    for version, ids in asked.items():
        stored = vstore.read_batch(ids, version, 1, time.monotonic() + 10)
        for i, uid in enumerate(ids):
            rec = by_key[(version, uid)]
            assert rec["v"] == 1 and rec["request_id"] == f"req-{version}"
            assert rec["found"] == (uid != "nobody")
            assert rec["status"] == ("found" if rec["found"] else "not_found")
            at = int(stored.computed_at_ms[i, 0])
            assert rec["computed_at_ms"] == (at if rec["found"] else None)
            assert abs(rec["served_at_ms"] - time.time() * 1000) < 300_000


def test_rate_0_writes_nothing(
    bootstrap: str,
    serve_logged: Callable[[Callable[[ServingMetrics], ServedLog]], Running],
    make_topic: Callable[..., str],
) -> None:
    topic = make_topic(bootstrap, 1, "served")
    opened: list[int] = []

    def make(m: ServingMetrics) -> ServedLog:
        def open_producer() -> Any:
            opened.append(1)
            return producer(KafkaConfig(bootstrap=bootstrap))

        return ServedLog(ServedLogConfig(rate=0.0, topic=topic), open_producer, m)

    r = serve_logged(make)
    for _ in range(5):
        r.stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=["u1", "u2"]), timeout=10)
    r.server.stop(grace_s=0)
    assert _no_served_log_thread()
    assert read_topic(bootstrap, topic) == []
    assert r.sample(SERVED, outcome="sent") == 0


def test_serve_builds_no_served_log_at_rate_0() -> None:
    from services.cli.serve_cmds import _served_log
    from services.cli.settings import load

    m = serving_metrics(CollectorRegistry())
    s = load({"serve.served_log.rate": "0"})
    assert _served_log(s, s.serve, m) is None
    s = load({"serve.served_log.rate": "0.5"})
    built = _served_log(s, s.serve, m)
    assert built is not None and built.config.rate == 0.5  # not started: no thread, no producer


class _Producer:
    """Stands for AckedProducer: records what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.closed = False

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        self.sent.append((topic, value, key))

    def flush(self, timeout_s: float | None = None) -> None:
        pass

    def close(self, timeout_s: float = 30.0) -> None:
        self.closed = True


def _answer(n: int) -> EmbeddingsResult:
    status = np.where(np.arange(n) % 2 == 0, FOUND, NOT_FOUND).astype(np.uint8)
    at = np.full((n, 1), 1_764_000_000_000, np.int64)
    stored = VectorBatch(np.zeros((n, 1, 4), np.float32), (status == FOUND).astype(np.int64),
                         at, at * 0, at * 0)  # fmt: skip
    return EmbeddingsResult("v1-x", status, np.zeros((n, 4), np.float32), stored, None)


def test_a_full_queue_drops_and_counts_and_never_blocks() -> None:
    """The producer thread is held in `open_producer`: the queue (1 item) fills at the first
    call; the next calls return at once, their rows counted as dropped. Released, the thread
    sends the one queued item, and close leaves no thread behind."""
    registry = CollectorRegistry()
    release = threading.Event()
    fake = _Producer()

    def open_producer() -> Any:
        release.wait(60)
        return fake

    log = ServedLog(ServedLogConfig(rate=1.0, topic="t", queue=1), open_producer,
                    serving_metrics(registry))  # fmt: skip
    log.start()
    try:
        ids, r = [f"u{i}" for i in range(10)], _answer(10)
        slowest = 0.0
        for _ in range(200):
            t0 = time.perf_counter()
            log.offer(ids, r)
            slowest = max(slowest, time.perf_counter() - t0)
        assert slowest < 0.5  # no wait on the queue: microseconds, bounded loosely for CI
        assert registry.get_sample_value(SERVED + "", {"outcome": "dropped"}) == 199 * 10
    finally:
        release.set()
        log.close()
    assert _no_served_log_thread() and fake.closed
    assert len(fake.sent) == 10
    assert registry.get_sample_value(SERVED, {"outcome": "sent"}) == 10
    first = json.loads(fake.sent[0][1] or b"")
    assert first["user_id"] == "u0" and first["computed_at_ms"] == 1_764_000_000_000
    assert json.loads(fake.sent[1][1] or b"")["computed_at_ms"] is None


def test_sampling_keeps_about_rate_of_the_rows() -> None:
    registry = CollectorRegistry()
    fake = _Producer()
    log = ServedLog(ServedLogConfig(rate=0.1, topic="t"), lambda: fake,
                    serving_metrics(registry), seed=7)  # fmt: skip
    log.start()
    try:
        ids, r = [f"u{i}" for i in range(100)], _answer(100)
        for _ in range(100):
            log.offer(ids, r)
    finally:
        log.close()
    assert 800 <= len(fake.sent) <= 1200  # 10_000 rows at 0.1: 1000 +- 6 sigma
