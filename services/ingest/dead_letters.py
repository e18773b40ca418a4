"""Refused records to the dead-letter topic, whatever their size (`Ingestor.commit` step 1).

Every refused record ends in one of three places, so none can stop its partition:

1. **Whole**: its key and value go to the dead-letter topic, the reason, detail and source
   (topic/partition/offset) in headers. The usual case.
2. **By reference**: the topic refuses the record itself (a value near the broker's message
   limit grows past it with the headers, or the dead-letter topic allows less than the
   events topic): a record with an empty value goes instead, with the same headers plus
   `persona-dlq-value-bytes` (the size refused) and `persona-dlq-by-reference: 1`, and the
   key when it is short. The record stays readable in the events topic at that position
   while the topic retains it. Counted in `persona_ingest_dead_letters_by_reference_total`.
3. **Skipped**: even the reference is refused for itself (not a broker outage, which
   raises and stops the batch as before): an ERROR log line names topic, partition,
   offset and reason, and `persona_ingest_records_skipped_total{reason}` moves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import Message

from contract.codec import BadRecord
from services.ingest.metrics import IngestMetrics
from services.ingest.source import DeadLetters, Headers

log = logging.getLogger(__name__)

DLQ_REASON = "persona-dlq-reason"
DLQ_DETAIL = "persona-dlq-detail"
DLQ_SOURCE = "persona-dlq-source"
DLQ_VALUE_BYTES = "persona-dlq-value-bytes"
DLQ_BY_REFERENCE = "persona-dlq-by-reference"
MAX_REFERENCE_KEY = 1024  # longer keys are left out of a reference (their length is kept)


def source_of(r: Message) -> str:
    return f"{r.topic()}/{r.partition()}/{r.offset()}"


def _headers(r: Message, exc: BadRecord) -> Headers:
    return [
        (DLQ_REASON, exc.reason.encode()),
        (DLQ_DETAIL, exc.detail.encode("utf-8", "replace")[:1024]),
        (DLQ_SOURCE, source_of(r).encode()),
    ]


def reference(r: Message, exc: BadRecord) -> tuple[bytes | None, bytes, Headers]:
    """The small record that stands for `r` when the topic refuses `r` itself."""
    key, value = r.key(), r.value() or b""
    headers = _headers(r, exc)
    headers += [(DLQ_VALUE_BYTES, str(len(value)).encode()), (DLQ_BY_REFERENCE, b"1")]
    if key is not None and len(key) > MAX_REFERENCE_KEY:
        headers.append(("persona-dlq-key-bytes", str(len(key)).encode()))
        key = None
    return key, b"", headers


def dead_letter(
    dlq: DeadLetters, bad: Sequence[tuple[Message, BadRecord]], metrics: IngestMetrics
) -> int:
    """Send every refused record whole, else by reference, else log and skip it (module
    docstring). Returns how many reached the topic (whole or by reference). Raises
    KafkaException when the topic cannot be written at all (`commit` step 1)."""
    whole = [(r.key(), r.value() or b"", _headers(r, exc)) for r, exc in bad]
    refused = dlq.send_all(whole)
    skipped: list[int] = []
    if refused:
        still = dlq.send_all([reference(*bad[i]) for i in refused])
        skipped = [refused[j] for j in still]
        metrics.dead_letters_by_reference.inc(len(refused) - len(skipped))
        for i in sorted(set(refused) - set(skipped)):
            r, exc = bad[i]
            log.warning(
                "dead letter %s (%s, %d bytes) refused by %s; sent by reference",
                source_of(r), exc.reason, len(r.value() or b""), dlq.topic,
            )  # fmt: skip
    for i in skipped:
        r, exc = bad[i]
        log.error(
            "record %s skipped: refused (%s: %.200s) and neither it nor a reference to it"
            " could be written to %s",
            source_of(r), exc.reason, exc.detail, dlq.topic,
        )  # fmt: skip
        metrics.skipped.labels(exc.reason).inc()
    gone = set(skipped)
    for i, (_r, exc) in enumerate(bad):
        if i not in gone:
            metrics.dead_lettered.labels(exc.reason).inc()
    return len(bad) - len(skipped)
