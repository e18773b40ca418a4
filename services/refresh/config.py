"""The refresher's one frozen config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contract import topics
from services.store.layout import BUCKETS, NO_RESCORE


@dataclass(frozen=True)
class RefreshConfig:
    """How the refresher schedules, batches and writes.

    Args:
        interval_s: a pass over the dirty users runs at least this often.
        drain_threshold: a pass also starts as soon as this many users are dirty.
        check_every_s: how often the backlog is looked at between passes.
        batch_size: users per encode batch (and per publish + store write).
        candidates_per_bucket: dirty users read per bucket per round (oldest first; a round
            sorts all of them by dirty time and splits them into batches).
        history: vectors kept per user and version.
        ttl_s: vectors expire this long after their last write (None: never).
        dtype: value encoding in the store.
        embeddings_topic: the update log.
        device: encoder device ("cpu", "cuda"); None: CUDA when present.
        compile: compile the encoder on the CPU (`encoder/compiled.py`: ~1.4x the
            encode rate; each version compiles in a thread for seconds after it is loaded
            and encodes eagerly meanwhile; needs a C++ compiler; without one, or
            on CUDA, a warning and the eager model). Off here (tests and the embedded
            stack load many versions); the CPU refresher of k8s/ sets it.
        bf16: encode in bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16 or
            AMX; `encoder.api.cpu_bf16`): 1.4-2x the float32 encode rate on such a CPU,
            vectors within a cosine of 0.99999 of float32's (`benchmarks/encode.py`); on
            other CPUs a warning and float32. CUDA always encodes in bf16. Off here; the
            CPU refresher of k8s/ sets it.
        encode_streams: encode that many batches at once on the CPU, each on its own thread
            with 1/streams of the torch threads (`encoder/streams.py`): one per core took
            1.16-1.18x the compiled bf16 encode rate on 2 cores (a median 69.1 % of the
            float32 matmul against 57.9 %, `benchmarks/encode.py`). A batch of `batch_size`
            windows splits into passes of 8,192 tokens (4,096 uncompiled or float32), so the
            passes of one batch run side by side. 1 here (the passes on the refresh thread);
            the CPU refresher of k8s/ sets 4 (8 cores: 2 torch threads a stream).
        backfill_batch: users per back-fill chunk (chunks interleave with dirty passes).
        follow_registry: start a cutover when the registry's ACTIVE changes (see cutover.py).
        max_publish_wait_s: flush timeout of the update-log producer per batch.
        expire_after_days: forget users whose newest event is older than this many days
            (window, vectors of every version, index entries; services/refresh/forget.py);
            None: never. Off here (the embedded stack replays old event times); the
            production settings (k8s/config.yaml) set 90.
        expire_every_s: how often the refresher looks for such users (a pass SCANs every
            user's meta hash and blocks the refresh loop meanwhile: daily by default).
        share_group: refreshers started with the same group divide the store's buckets
            through a Kafka consumer group of this id (services/refresh/share.py); unset:
            this refresher takes every bucket (one refresher, the embedded stack).
        share_topic: the topic whose partitions stand for bucket ranges (no records).
        share_ranges: partitions of `share_topic` when it is created (bucket ranges: at most
            1024, and at least the most refreshers you will run).
        share_session_timeout_ms: the share group's session timeout: a refresher that
            stops heartbeating (killed, hung host) loses its buckets to the others after
            this long (heartbeats every fifth of it). Kafka's broker floor is 6 s
            (`group.min.session.timeout.ms`).
        audiences: which score columns also go into the version's audience sets (what
            GetAudience reads; services/store/audience.py): "all", "none", or outcome names
            separated by commas (e.g. "type=purchase,(any)": every horizon of those).
            Default "(any)": activity / churn audiences at every horizon. Each indexed
            column is a sorted-set entry per user, updated on every write: all 50 columns of
            the synthetic world cost ~4x the store write time and ~5x the store memory of
            vectors alone, "(any)" ~1.5x (benchmarks/audience.py). Set it alike on every
            refresher (the version's score columns record it when first written).
        drift: measure how far refreshed vectors moved from the users' previous ones (one
            more pipelined store read per batch and version; services/refresh/drift.py).
        rescore_after_s: a user without new events is encoded again this long after its
            newest event, then at doubling gaps (2x, 4x, ... as long idle), so the vector and
            outcome scores of an idle user follow its idleness (a churn audience finds it;
            the window is the same, its ages are not). None: users are encoded only after new
            events and in back-fills. Each rescore costs one encode and write per user:
            about log2(rescore_until_s / rescore_after_s) + 1 per idle spell (5 by default).
        rescore_until_s: no rescore once a user has been idle longer than this (default 30
            days: past the longest outcome horizon, two weeks, the scores change little).
    """

    interval_s: float = 30.0
    drain_threshold: int = 10_000
    check_every_s: float = 1.0
    batch_size: int = 512
    candidates_per_bucket: int = 64
    history: int = 4
    ttl_s: int | None = None
    dtype: Literal["float32", "float16"] = "float32"
    embeddings_topic: str = topics.EMBEDDINGS
    device: str | None = None
    compile: bool = False
    bf16: bool = False
    encode_streams: int = 1
    backfill_batch: int = 1024
    follow_registry: bool = True
    max_publish_wait_s: float = 30.0
    expire_after_days: float | None = None
    expire_every_s: float = 86_400.0
    share_group: str | None = None
    share_topic: str = topics.REFRESH_SHARES
    share_ranges: int = 32
    share_session_timeout_ms: int = 6000
    drift: bool = True
    audiences: str = "(any)"
    rescore_after_s: float | None = 86_400.0
    rescore_until_s: float = 30 * 86_400.0

    def __post_init__(self) -> None:
        if min(self.batch_size, self.candidates_per_bucket, self.backfill_batch) < 1:
            raise ValueError("batch_size, candidates_per_bucket, backfill_batch must be >= 1")
        if self.encode_streams < 1:
            raise ValueError("encode_streams must be >= 1 (1: passes on the refresh thread)")
        if self.interval_s <= 0 or self.check_every_s <= 0 or self.expire_every_s <= 0:
            raise ValueError("interval_s, check_every_s and expire_every_s must be > 0")
        if not 1 <= self.share_ranges <= BUCKETS:
            raise ValueError("share_ranges must be between 1 and 1024 (the buckets)")
        if self.share_session_timeout_ms < 1000:
            raise ValueError("share_session_timeout_ms must be >= 1000")
        if self.expire_after_days is not None and self.expire_after_days <= 0:
            raise ValueError("expire_after_days must be > 0 (unset: no expiry)")
        if self.rescore_after_s is not None and not (
            0 < self.rescore_after_s <= self.rescore_until_s
        ):
            raise ValueError("rescore_after_s must be > 0 and <= rescore_until_s (unset: off)")

    def next_rescore(self, at_ms: int, newest_ms: int) -> int:
        """When a user encoded at `at_ms`, newest event at `newest_ms`, is due again if no
        event comes: `rescore_after_s` after its newest event, then at doubling gaps (each
        time as long again as it has been idle), none past `rescore_until_s` of idleness
        (`NO_RESCORE`)."""
        after = self.rescore_after_s
        if after is None:
            return NO_RESCORE
        due = at_ms + max(int(after * 1000), at_ms - newest_ms)
        return due if due - newest_ms <= self.rescore_until_s * 1000 else NO_RESCORE
