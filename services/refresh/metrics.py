"""Refresher metrics. Built by a function that takes the registry; nothing at import time.
`RefreshStats` counts the same things for one run, as plain numbers (returned by `run`).

The index's own metrics (size, rebuild duration, update-log lag) live in
`services.index.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.store.records import StoredVector
from services.store.vectors import UserWrite, WriteResult

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DRIFT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
_AGE = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400, 30 * 86400)


@dataclass
class RefreshStats:
    passes: int = 0  # started
    passes_done: int = 0  # ended (no user left dirty, or stopped)
    batches: int = 0
    users: int = 0
    vectors_written: int = 0
    vectors_published: int = 0
    skipped: int = 0
    still_dirty: int = 0
    backfilled: int = 0
    cutovers: int = 0
    errors: int = 0
    expired: int = 0  # users forgotten for inactivity (expire_after_days)
    rescored: int = 0  # users encoded again without new events (rescore_after_s)
    refused_forgotten: int = 0  # vectors refused: encoded from a window since forgotten
    republished: int = 0  # stored heads published again after an older vector of theirs

    def error(self, metrics: RefreshMetrics | None, kind: str) -> None:
        """One failed step, retried or left alone: here and in
        persona_refresh_errors_total{kind} (`error_kind`)."""
        self.errors += 1
        if metrics is not None:
            metrics.errors.labels(kind).inc()


@dataclass(frozen=True)
class RefreshMetrics:
    dirty_users: Gauge
    batch_users: Histogram
    stage_seconds: Histogram
    users_encoded: Counter
    users_per_second: Gauge
    staleness_seconds: Histogram
    event_to_vector_seconds: Histogram
    vectors_written: Counter
    vectors_skipped: Counter
    vectors_published: Counter
    users_expired: Counter
    users_rescored: Counter
    still_dirty: Counter
    backfilled: Counter
    cutovers: Counter
    active_version: Gauge
    errors: Counter
    unknown_properties: Counter
    records_undecodable: Counter
    drift: Histogram  # labels: version
    norm_ratio: Gauge  # labels: version
    encoder_compiled: Gauge  # labels: version


def refresh_metrics(registry: CollectorRegistry) -> RefreshMetrics:
    return RefreshMetrics(
        dirty_users=Gauge(
            "persona_refresh_dirty_users", "Users waiting to be re-encoded", registry=registry
        ),
        batch_users=Histogram(
            "persona_refresh_batch_users",
            "Users per refresh batch",
            buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=registry,
        ),
        stage_seconds=Histogram(
            "persona_refresh_batch_seconds",
            "Time per refresh batch, by stage (read, encode, publish, write, total)",
            ["stage"],
            buckets=_SECONDS,
            registry=registry,
        ),
        users_encoded=Counter(
            "persona_refresh_users_encoded",
            "Users encoded, by model version (rate() = users/s)",
            ["version"],
            registry=registry,
        ),
        users_per_second=Gauge(
            "persona_refresh_users_per_second",
            "Users refreshed per second over the last pass",
            registry=registry,
        ),
        staleness_seconds=Histogram(
            "persona_refresh_embedding_staleness_seconds",
            "Age (now - computed_at) of each vector when a newer one replaced it",
            buckets=_AGE,
            registry=registry,
        ),
        event_to_vector_seconds=Histogram(
            "persona_refresh_event_to_vector_seconds",
            "From the event that made a user dirty to its new vector in the store",
            buckets=_AGE,
            registry=registry,
        ),
        vectors_written=Counter(
            "persona_refresh_vectors_written",
            "Vectors written to the store (all versions)",
            registry=registry,
        ),
        vectors_skipped=Counter(
            "persona_refresh_vectors_skipped",
            "Vectors not written because the store held a newer window's vector",
            registry=registry,
        ),
        users_expired=Counter(
            "persona_refresh_users_expired",
            "Users forgotten because they had no events for expire_after_days",
            registry=registry,
        ),
        users_rescored=Counter(
            "persona_refresh_users_rescored",
            "Users encoded again without new events, their rescore time having come "
            "(rescore_after_s)",
            registry=registry,
        ),
        vectors_published=Counter(
            "persona_refresh_vectors_published",
            "Vectors published to the update log, by model version",
            ["version"],
            registry=registry,
        ),
        still_dirty=Counter(
            "persona_refresh_users_still_dirty",
            "Users whose window changed while they were encoded (kept dirty)",
            registry=registry,
        ),
        backfilled=Counter(
            "persona_refresh_backfill_users",
            "Users back-filled for a version being promoted",
            ["version"],
            registry=registry,
        ),
        cutovers=Counter(
            "persona_refresh_cutovers",
            "Active-version flips done by the refresher (promote after back-fill, registry)",
            registry=registry,
        ),
        active_version=Gauge(
            "persona_refresh_active_version_info",
            "1 for the active model version",
            ["version"],
            registry=registry,
        ),
        errors=Counter(
            "persona_refresh_errors",
            "Refresh passes that failed and will be retried, by kind (store, broker, model, other)",
            ["kind"],
            registry=registry,
        ),
        unknown_properties=Counter(
            "persona_refresh_unknown_properties",
            "Event properties the model version was not trained on, skipped when encoding, by "
            "name (at most 64 names per version, the rest as '(other)')",
            ["version", "property"],
            registry=registry,
        ),
        records_undecodable=Counter(
            "persona_refresh_records_undecodable",
            "Window records left out of encoding: a layout this code does not read (a newer"
            " ingest during a rolling upgrade) or corrupt; the rest of each window is encoded",
            registry=registry,
        ),
        drift=Histogram(
            "persona_refresh_vector_drift_cosine",
            "Cosine distance (1 - cos) of a user's new vector from its previous one of the same"
            " model version, per user refreshed that had one (services/refresh/drift.py)",
            ["version"],
            buckets=_DRIFT,
            registry=registry,
        ),
        norm_ratio=Gauge(
            "persona_refresh_vector_norm_ratio",
            "Mean vector length of the last refresh batch over that of the version's parity"
            " sample (its training windows); 1 = as in training",
            ["version"],
            registry=registry,
        ),
        encoder_compiled=Gauge(
            "persona_refresh_encoder_compiled",
            "With PERSONA_ENCODER_COMPILE: 1 when the version's encoder runs compiled,"
            " 0 while it compiles in the background (seconds after a version is loaded) or"
            " when compiling failed and it runs eagerly (slower; the log says why);"
            " absent when compiling was not asked",
            ["version"],
            registry=registry,
        ),
    )


def account_batch(
    s: RefreshStats,
    m: RefreshMetrics | None,
    writes: Sequence[UserWrite],
    vectors: Sequence[StoredVector],
    res: WriteResult,
    seconds: tuple[float, float, float],
    dirty_ts: Sequence[int],
    now_ms: int,
) -> None:
    """Count one committed batch: `seconds` = (publish, store write, total since the read);
    `dirty_ts` = the dirty times of a round's users (empty for a back-fill or a rescore)."""
    s.batches += 1
    s.users += len(writes)
    s.vectors_published += len(vectors)
    s.vectors_written += res.written
    s.skipped += res.skipped
    s.still_dirty += res.still_dirty
    if m is None:
        return
    pub, wr, total = seconds
    m.batch_users.observe(len(writes))
    m.stage_seconds.labels(stage="publish").observe(pub)
    m.stage_seconds.labels(stage="write").observe(wr)
    m.stage_seconds.labels(stage="total").observe(total)
    by_ver: dict[str, int] = {}
    for v in vectors:
        by_ver[v.model_version] = by_ver.get(v.model_version, 0) + 1
    for ver, k in by_ver.items():
        m.vectors_published.labels(version=ver).inc(k)
    m.vectors_written.inc(res.written)
    m.vectors_skipped.inc(res.skipped)
    m.still_dirty.inc(res.still_dirty)
    for ts in res.replaced_computed_at_ms:
        m.staleness_seconds.observe(max(0, now_ms - ts) / 1000)
    for ts in dirty_ts:
        m.event_to_vector_seconds.observe(max(0, now_ms - ts) / 1000)


def error_kind(exc: BaseException) -> str:
    """The `kind` label of `persona_refresh_errors_total`: which dependency failed."""
    from confluent_kafka import KafkaException
    from redis.exceptions import RedisError

    from encoder.registry import RegistryError
    from services.refresh.encoders import ModelLoadError

    if isinstance(exc, RedisError):
        return "store"
    if isinstance(exc, KafkaException):
        return "broker"
    if isinstance(exc, ModelLoadError | RegistryError):
        return "model"
    return "other"
