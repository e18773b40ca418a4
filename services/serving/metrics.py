"""Prometheus metrics of the serving process. Nothing is registered at import time:
`serving_metrics(registry)` builds them on the registry it is handed.

NOT_FOUND and fallback rates are ratios of `persona_serving_embeddings_total` by status:
    rate(persona_serving_embeddings_total{status="not_found"}[5m])
      / ignoring(status) sum without(status)(rate(persona_serving_embeddings_total[5m]))
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass(frozen=True, slots=True)
class ServingMetrics:
    requests: Counter  # labels: service, method, code
    latency: Histogram  # labels: service, method
    batch_size: Histogram  # labels: method (user ids per GetEmbeddings, seeds per lookalike)
    embeddings: Counter  # labels: status (found | not_found | fallback)
    short_term: Counter  # labels: source (state | window): users the head folded events for
    store_errors: Counter  # labels: kind (timeout | unavailable | error)
    neighbors: Histogram  # neighbours returned per FindLookalikes
    index_size: Gauge  # users in the served lookalike index (read at scrape)
    store_reachable: Gauge  # 1 while the last store probe answered, else 0
    served_log: Counter  # labels: outcome (sent | dropped | failed), answers of the served log


def serving_metrics(registry: CollectorRegistry) -> ServingMetrics:
    return ServingMetrics(
        requests=Counter(
            "persona_serving_requests_total",
            "gRPC calls handled, by method and status code.",
            ["service", "method", "code"],
            registry=registry,
        ),
        latency=Histogram(
            "persona_serving_request_seconds",
            "gRPC call latency in the server, by method.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        batch_size=Histogram(
            "persona_serving_batch_size",
            "User ids per GetEmbeddings call / seeds per FindLookalikes call.",
            ["method"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        ),
        embeddings=Counter(
            "persona_serving_embeddings_total",
            "Per-user GetEmbeddings results, by status.",
            ["status"],
            registry=registry,
        ),
        short_term=Counter(
            "persona_serving_short_term_users_total",
            "Users whose new events the short-term head folded into GetEmbeddings rows, by where"
            " the events came from: ingest (the delta ingest computed: serving only adds it),"
            " state (the short-term state ingest keeps: an APPLY or refresh since the delta) or"
            " window (read from the window by script: ingest without the models, or a state"
            " that does not account for every change).",
            ["source"],
            registry=registry,
        ),
        store_errors=Counter(
            "persona_serving_store_errors_total",
            "Store calls that failed or ran past their time budget, by kind.",
            ["kind"],
            registry=registry,
        ),
        neighbors=Histogram(
            "persona_serving_lookalike_neighbors",
            "Neighbours returned per FindLookalikes call.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        ),
        index_size=Gauge(
            "persona_serving_index_size",
            "Users in the lookalike index this replica serves.",
            registry=registry,
        ),
        store_reachable=Gauge(
            "persona_serving_store_reachable",
            "1 while the last store probe answered, 0 while it fails (readiness goes"
            " NOT_SERVING after a few failures in a row).",
            registry=registry,
        ),
        served_log=Counter(
            "persona_serving_served_log_records_total",
            "Sampled GetEmbeddings answers of the served log, by outcome: sent (acknowledged by"
            " Kafka), dropped (its queue was full), failed (not acknowledged).",
            ["outcome"],
            registry=registry,
        ),
    )
