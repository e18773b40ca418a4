"""Write events to the events topic (key = user id), as protobuf or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

from opentelemetry.trace import SpanKind

from contract.codec import event_to_json, event_to_proto
from contract.events import Event
from services.common import kafka as kafka_clients
from services.config import KafkaConfig
from services.telemetry import kafka_headers, tracer

WireFormat = Literal["proto", "json"]


def produce_events(cfg: KafkaConfig, events: Iterable[Event], fmt: WireFormat = "proto") -> int:
    """Send events keyed by user id; returns how many the broker acknowledged."""
    encode = event_to_proto if fmt == "proto" else event_to_json
    prod = kafka_clients.producer(cfg, {"max.in.flight.requests.per.connection": 5})
    n = 0
    with _span("persona.produce", cfg.topic):
        headers = kafka_headers() or None  # the trace context, when traces are on
        try:
            for ev in events:
                key = ev.user_id.encode("utf-8")
                prod.send(cfg.topic, key=key, value=encode(ev), headers=headers)
                n += 1
            prod.flush()  # raises unless every record was acknowledged
        finally:
            prod.close(timeout_s=30)
    return n


@contextmanager
def _span(name: str, topic: str) -> Iterator[None]:
    t = tracer()
    if t is None:
        yield
        return
    with t.start_as_current_span(name, kind=SpanKind.PRODUCER,
                                 attributes={"messaging.destination.name": topic}):  # fmt: skip
        yield


def produce_lines(cfg: KafkaConfig, lines: Iterable[bytes]) -> int:
    """Send JSON lines as they are (the consumer validates them; bad ones are dead-lettered).

    The key is the line's user_id when the line parses as an object holding one, else none.
    Blank lines are skipped.
    """
    prod = kafka_clients.producer(cfg)
    n = 0
    with _span("persona.produce", cfg.topic):
        n = _send_lines(prod, cfg.topic, lines)
    return n


def _send_lines(prod: kafka_clients.AckedProducer, topic: str, lines: Iterable[bytes]) -> int:
    headers = kafka_headers() or None
    n = 0
    try:
        for raw in lines:
            line = raw.strip()
            if not line:
                continue
            key = None
            try:
                obj = json.loads(line)
                if isinstance(obj, dict) and isinstance(obj.get("user_id"), str):
                    key = obj["user_id"].encode("utf-8")
            except (ValueError, RecursionError):
                pass
            prod.send(topic, key=key, value=line, headers=headers)
            n += 1
        prod.flush()  # raises unless every record was acknowledged
    finally:
        prod.close(timeout_s=30)
    return n
