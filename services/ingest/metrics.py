"""Consumer metrics. Built by a function that takes the registry; nothing at import time."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class IngestMetrics:
    consumed: Counter
    applied: Counter
    duplicate: Counter
    replayed: Counter
    forgotten: Counter
    trimmed: Counter
    dead_lettered: Counter
    dead_letters_by_reference: Counter
    skipped: Counter
    store_errors: Counter
    short_term_deltas: Counter  # label result
    lag: Gauge
    batch_write_seconds: Histogram
    batch_records: Histogram
    window_length: Histogram


def ingest_metrics(registry: CollectorRegistry) -> IngestMetrics:
    return IngestMetrics(
        consumed=Counter(
            "persona_ingest_events_consumed",
            "Records read from the events topic",
            registry=registry,
        ),
        applied=Counter(
            "persona_ingest_events_applied", "Events added to a window", registry=registry
        ),
        duplicate=Counter(
            "persona_ingest_events_duplicate",
            "Events whose event id was already in the window (ignored)",
            registry=registry,
        ),
        replayed=Counter(
            "persona_ingest_events_replayed",
            "Records at or below the user's applied offset (a replay; changes nothing)",
            registry=registry,
        ),
        forgotten=Counter(
            "persona_ingest_events_forgotten",
            "Events of a forgotten user at or before the forget time (refused)",
            registry=registry,
        ),
        trimmed=Counter(
            "persona_ingest_events_trimmed",
            "Events dropped from windows by the size or time bound",
            registry=registry,
        ),
        dead_lettered=Counter(
            "persona_ingest_events_dead_lettered",
            "Records sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        ),
        dead_letters_by_reference=Counter(
            "persona_ingest_dead_letters_by_reference",
            "Dead letters the topic refused whole (too large): sent as a reference instead",
            registry=registry,
        ),
        skipped=Counter(
            "persona_ingest_records_skipped",
            "Refused records that neither whole nor by reference reached the dead-letter"
            " topic: logged with topic/partition/offset and skipped, by reason",
            ["reason"],
            registry=registry,
        ),
        store_errors=Counter(
            "persona_ingest_store_errors",
            "Failed window writes (retried; offsets not committed)",
            registry=registry,
        ),
        short_term_deltas=Counter(
            "persona_ingest_short_term_deltas",
            "Short-term deltas after a window write (LAYOUT.md 'Short-term delta'), by result:"
            " written (users), failed (model versions whose deltas of a batch could not be"
            " computed or stored: serving folds their states instead; logged)",
            ["result"],
            registry=registry,
        ),
        lag=Gauge(
            "persona_ingest_consumer_lag_records",
            "Records between the consumer position and the partition end",
            ["partition"],
            registry=registry,
        ),
        batch_write_seconds=Histogram(
            "persona_ingest_batch_write_seconds",
            "Time to apply one polled batch to the store",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        ),
        batch_records=Histogram(
            "persona_ingest_batch_records",
            "Records per polled batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=registry,
        ),
        window_length=Histogram(
            "persona_ingest_window_length_events",
            "Window length after an update",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        ),
    )
