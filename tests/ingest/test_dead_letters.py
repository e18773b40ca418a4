"""The dead-letter path's fallbacks (services/ingest/dead_letters.py), as pure logic: a
stand-in topic that refuses records above a size. Whole when it fits, by reference when the
record does not, skipped with a counter and an ERROR line naming topic/partition/offset
when not even the reference does; a topic that cannot be written at all still raises. The
same path against the real broker: tests/faults/test_ingest_poison.py."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import CollectorRegistry

from contract.codec import BadRecord
from services.ingest.dead_letters import (
    DLQ_BY_REFERENCE,
    DLQ_REASON,
    DLQ_SOURCE,
    DLQ_VALUE_BYTES,
    dead_letter,
)
from services.ingest.metrics import ingest_metrics
from services.ingest.source import Headers

Record = tuple[bytes | None, bytes, Headers]


class SizeLimitedTopic:
    """Takes records up to `limit` bytes (key + value + headers), refuses larger ones for
    themselves (as `DeadLetters.send_all` reports MSG_SIZE_TOO_LARGE); `down`: raises."""

    topic = "events.dlq"

    def __init__(self, limit: int, down: bool = False) -> None:
        self.limit = limit
        self.down = down
        self.written: list[Record] = []

    def send_all(self, records: Sequence[Record]) -> list[int]:
        if self.down:
            raise KafkaException(KafkaError(KafkaError.BROKER_NOT_AVAILABLE))
        refused = []
        for i, (key, value, headers) in enumerate(records):
            size = len(key or b"") + len(value)
            size += sum(len(k) + len(v or b"") for k, v in headers)
            if size > self.limit:
                refused.append(i)
            else:
                self.written.append((key, value, headers))
        return refused


def _bad(offset: int, value: bytes, reason: str = "undecodable") -> tuple[Message, BadRecord]:
    msg = Message(topic="events", partition=3, offset=offset, key=b"u1", value=value)
    return msg, BadRecord(reason, "why " * 400)


def _count(reg: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return reg.get_sample_value(name, labels or {}) or 0.0


def test_each_record_goes_whole_by_reference_or_is_skipped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = CollectorRegistry()
    metrics = ingest_metrics(reg)
    topic = SizeLimitedTopic(limit=5_000)
    bad = [_bad(10, b"x" * 100), _bad(11, b"x" * 100_000, "oversized"), _bad(12, b"y")]
    with caplog.at_level(logging.WARNING, "services.ingest.dead_letters"):
        assert dead_letter(topic, bad, metrics) == 3  # type: ignore[arg-type]
    whole = [h for _k, v, h in topic.written if v]
    refs = [dict(h) for _k, v, h in topic.written if not v]
    assert len(whole) == 2 and len(refs) == 1
    assert refs[0][DLQ_BY_REFERENCE] == b"1" and refs[0][DLQ_VALUE_BYTES] == b"100000"
    assert refs[0][DLQ_SOURCE] == b"events/3/11" and refs[0][DLQ_REASON] == b"oversized"
    assert _count(reg, "persona_ingest_dead_letters_by_reference_total") == 1
    assert _count(reg, "persona_ingest_events_dead_lettered_total", {"reason": "oversized"}) == 1
    assert _count(reg, "persona_ingest_events_dead_lettered_total", {"reason": "undecodable"}) == 2
    assert "events/3/11" in caplog.text

    # A topic that takes nothing this large: not even the reference (headers of ~2 KB).
    tiny = SizeLimitedTopic(limit=500)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "services.ingest.dead_letters"):
        assert dead_letter(tiny, [_bad(20, b"z" * 1000, "bad_props")], metrics) == 0  # type: ignore[arg-type]
    assert tiny.written == []
    assert _count(reg, "persona_ingest_records_skipped_total", {"reason": "bad_props"}) == 1
    assert _count(reg, "persona_ingest_events_dead_lettered_total", {"reason": "bad_props"}) == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "events/3/20" in errors[0].getMessage()


def test_a_topic_that_cannot_be_written_raises_and_counts_nothing() -> None:
    reg = CollectorRegistry()
    with pytest.raises(KafkaException):
        dead_letter(SizeLimitedTopic(10**6, down=True), [_bad(1, b"x")], ingest_metrics(reg))  # type: ignore[arg-type]
    assert _count(reg, "persona_ingest_events_dead_lettered_total", {"reason": "undecodable"}) == 0
