"""Logs and traces (services/telemetry.py), checked with an in-memory span exporter.

- JSON log lines carry the request id and the trace id;
- a gRPC call to the server is a span joined to the caller's trace, with the request id,
  which the caller gets back in the response metadata;
- `persona produce` puts its trace context in the records' headers and the ingest batch span
  links to it; the refresher's batch span puts its own in the update-log records.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc
from prometheus_client import CollectorRegistry

from contract.events import Event
from services.config import KafkaConfig, TelemetryConfig, WindowConfig
from services.index.holder import IndexHolder
from services.ingest import produce
from services.ingest.consumer import Ingestor
from services.ingest.metrics import ingest_metrics
from services.refresh.publish import Publisher
from services.serving.config import ServeConfig
from services.serving.metrics import serving_metrics
from services.serving.server import ServingServer
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.memory_vectors import MemoryVectors
from services.store.records import StoredVector
from services.store.windows import WindowStore
from services.telemetry import REQUEST_ID, kafka_headers, links_from_headers, setup_logging


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider, exporter
    finally:
        provider.shutdown()


def test_json_logs_carry_request_and_trace_ids(spans: Any) -> None:
    provider, _ = spans
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(TelemetryConfig(log_format="json", log_level="INFO"), stream=out)
        token = REQUEST_ID.set("req-1")
        with provider.get_tracer("t").start_as_current_span("work") as span:
            logging.getLogger("persona.test").info("hello %s", "there")
        REQUEST_ID.reset(token)
        logging.getLogger("persona.test").warning("outside")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "hello there" and first["request_id"] == "req-1"
    assert first["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert first["level"] == "INFO" and first["logger"] == "persona.test"
    assert "request_id" not in second and "trace_id" not in second


def test_grpc_call_is_a_span_of_the_callers_trace(spans: Any) -> None:
    provider, exporter = spans
    cfg = ServeConfig(host="127.0.0.1", port=0, dim=8, grace_s=0.5)
    store = MemoryVectors()
    store.set_active("v1")
    server = ServingServer(
        cfg, store, IndexHolder(), serving_metrics(CollectorRegistry()), provider
    )
    server.start()
    caller = provider.get_tracer("caller")
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch,
            caller.start_as_current_span("ranker request") as parent,
        ):
            stub = service_pb2_grpc.UserEmbeddingServiceStub(ch)
            meta = [(k, v) for k, v in _carrier().items()] + [("x-request-id", "abc-123")]
            _, call = stub.GetEmbeddings.with_call(
                pb.GetEmbeddingsRequest(user_ids=["u1"]), metadata=meta, timeout=10
            )
            assert ("x-request-id", "abc-123") in call.initial_metadata()
            _, call = stub.GetEmbeddings.with_call(
                pb.GetEmbeddingsRequest(user_ids=["u1"]), timeout=10
            )
            generated = dict(call.initial_metadata())["x-request-id"]
            assert generated and generated != "abc-123"
    finally:
        server.stop(grace_s=0)
    served = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert len(served) == 2
    joined = served[0]
    assert joined.context.trace_id == parent.get_span_context().trace_id
    assert joined.parent is not None and joined.parent.span_id == parent.get_span_context().span_id
    assert joined.attributes is not None and joined.attributes["persona.request_id"] == "abc-123"


def _carrier() -> dict[str, str]:
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


@pytest.mark.integration
def test_trace_context_from_producer_to_ingest_and_into_the_update_log(
    stack: EmbeddedStack, spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("persona")
    monkeypatch.setattr(produce, "tracer", lambda: tracer)
    a = stack.addresses
    topic = f"trace-{uuid.uuid4().hex[:8]}"
    kcfg = KafkaConfig(bootstrap=a.bootstrap, topic=topic, dlq_topic=topic + ".dlq",
                       group_id=f"g-{topic}", partitions=1)  # fmt: skip
    events = [Event(f"u{i}", f"e{i}", 1_700_000_000_000 + i, "view") for i in range(20)]
    assert produce.produce_events(kcfg, events) == 20
    (produced,) = [s for s in exporter.get_finished_spans() if s.name == "persona.produce"]

    client = connect(a.redis)
    try:
        ing = Ingestor(kcfg, WindowConfig(), WindowStore(client, WindowConfig()),
                       ingest_metrics(CollectorRegistry()), tracer=tracer)  # fmt: skip
        stats = ing.run(threading.Event(), until_idle=True, poll_ms=200)
    finally:
        client.close()
    assert stats.consumed == 20
    batches = [s for s in exporter.get_finished_spans() if s.name == "persona.ingest batch"]
    assert batches
    linked = {link.context.trace_id for b in batches for link in b.links}
    assert linked == {produced.context.trace_id}

    sent: list[dict[str, Any]] = []

    class Producer:  # what Publisher sends, kept
        def send(self, topic: str, **kw: Any) -> None:
            sent.append(kw)

        def flush(self, timeout_s: float = 0) -> None: ...

    import numpy as np

    with tracer.start_as_current_span("persona.refresh batch") as span:
        Publisher(Producer(), "persona.embeddings").publish(
            [StoredVector("u1", "v1", np.ones(4, np.float32), 1, 1, 1)], kafka_headers()
        )
    (links,) = [links_from_headers([kw["headers"]]) for kw in sent]
    assert [link.context.span_id for link in links] == [span.get_span_context().span_id]
