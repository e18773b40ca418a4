"""Prometheus metrics of the lookalike index and its follower. Nothing is registered at
import time: `index_metrics(registry)` builds them on the registry it is handed."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REBUILD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True, slots=True)
class IndexMetrics:
    size: Gauge
    rebuild_seconds: Histogram
    rebuild_failures: Counter
    lag_records: Gauge
    updates: Counter  # label op: upsert | delete | ignored (other model version) | invalid
    nprobe: Gauge  # label k
    recall: Gauge  # label k
    live_recall: Gauge  # label k (probe.py)
    memory: Gauge  # label part


def index_metrics(registry: CollectorRegistry) -> IndexMetrics:
    return IndexMetrics(
        size=Gauge("persona_index_size", "Users in the lookalike index.", registry=registry),
        rebuild_seconds=Histogram(
            "persona_index_rebuild_seconds",
            "Duration of lookalike index rebuilds (build plus swap).",
            buckets=REBUILD_BUCKETS,
            registry=registry,
        ),
        rebuild_failures=Counter(
            "persona_index_rebuild_failures",
            "Lookalike index rebuilds that failed (the previous index stays in service; the"
            " next try waits twice as long after each failure in a row, up to 10 minutes).",
            registry=registry,
        ),
        lag_records=Gauge(
            "persona_index_update_log_lag_records",
            "Records of the update log not yet applied to the index.",
            registry=registry,
        ),
        updates=Counter(
            "persona_index_updates_total",
            "Update-log records applied to the index, by operation.",
            ["op"],
            registry=registry,
        ),
        nprobe=Gauge(
            "persona_index_nprobe",
            "Search setting chosen at the last build for searches of up to k results: IVF "
            "lists probed (HNSW efSearch), the cheapest reaching the recall target.",
            ["k"],
            registry=registry,
        ),
        recall=Gauge(
            "persona_index_recall_ratio",
            "Recall@k measured at the last build with the chosen setting, against exact "
            "search on a sample of the indexed vectors.",
            ["k"],
            registry=registry,
        ),
        live_recall=Gauge(
            "persona_index_live_recall_ratio",
            "Recall@k of the index in service measured by the live probe (every few minutes,"
            " between builds), against exact search on a sample of the held vectors.",
            ["k"],
            registry=registry,
        ),
        memory=Gauge(
            "persona_index_memory_bytes",
            "Estimated bytes the lookalike index holds, by part (vectors, ids, rows, copy).",
            ["part"],
            registry=registry,
        ),
    )
