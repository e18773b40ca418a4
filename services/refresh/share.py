"""Which buckets this refresher works on: all of them, or its share of a consumer group's.

Refreshers divide the store's 1024 buckets (services/store/LAYOUT.md) through a Kafka
consumer group, not a membership protocol of their own. The shares topic
(`persona.refresh.shares`, `share_ranges` partitions, 32 by default; nobody writes to it)
has one partition per contiguous bucket range: partition p of P holds the buckets
[p * 1024 // P, (p + 1) * 1024 // P). Every refresher started with the same `share_group`
(`--share-group`, PERSONA_REFRESH_GROUP) subscribes to it in that group, and the group
coordinator does the rest: it gives each live member some partitions, moves a dead member's
partitions to the others once its session times out (`share_session_timeout_ms`, 6 s by
default), and rebalances when a member joins or leaves.

`GroupShare`, in order:
1. `start()` creates the topic when it is missing, reads its partition count, subscribes,
   and starts a thread that polls the consumer every 0.2 s (no records come; the poll runs
   the rebalance callbacks and keeps `max_poll_interval_ms` from expiring however long an
   encode batch takes; heartbeats run on librdkafka's own thread).
2. on assign: the partitions' buckets join `owned()`.
3. on revoke: they leave `owned()` at once, so the refresher's next dirty scan, batch and
   back-fill chunk skip them; then the callback waits, at most `fence_s`, until the batches
   claimed before (`claim` ... `release`, encode to store write) are committed, so the
   member that gets those buckets next does not encode the same users again. A batch still
   running after `fence_s` finishes anyway (its store write is conditional, see
   LAYOUT.md): the cost is users encoded twice, never a wrong vector.
   On lost (the session expired: the partitions may already be another member's) the
   buckets leave at once, without waiting.
4. `close()` stops the thread and closes the consumer, which leaves the group: the others
   get its buckets at once instead of after the session timeout.

`AllBuckets` is the refresher without a group: every bucket, one range, no Kafka; exactly
the single refresher there was before shares existed (the embedded stack, `make demo`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from services.config import KafkaConfig
from services.refresh.config import RefreshConfig
from services.store import layout

log = logging.getLogger(__name__)

_ALL = range(layout.BUCKETS)


def bucket_range(partition: int, partitions: int) -> range:
    """The buckets partition `partition` of `partitions` stands for.

    >>> bucket_range(0, 32), bucket_range(31, 32)
    (range(0, 32), range(992, 1024))
    """
    n = layout.BUCKETS
    return range(partition * n // partitions, (partition + 1) * n // partitions)


class AllBuckets:
    """Every bucket, always: the refresher alone."""

    def owned(self) -> frozenset[int] | None:
        """The buckets to work on now; None: all of them."""
        return None

    def ranges(self) -> list[range]:
        """The owned buckets as ranges, each back-filled as one unit."""
        return [_ALL]

    def claim(self, user_ids: Sequence[str]) -> list[int]:
        """Indexes of `user_ids` in owned buckets. When any, a batch of them is in flight
        until `release()`."""
        return list(range(len(user_ids)))

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class GroupShare(AllBuckets):
    """This refresher's share of the buckets, as a consumer group gives it (see above).

    Args:
        consumer_config: librdkafka settings (`rdkafka_config(...)`, group id, timeouts).
        topic: the shares topic (it must exist: `start` creates it).
        fence_s: longest wait, on revoke, for the batches in flight to be committed.
    """

    def __init__(self, consumer_config: dict[str, Any], topic: str, fence_s: float) -> None:
        self.config = consumer_config
        self.topic = topic
        self.fence_s = fence_s
        self.partitions = 0
        self.assignments = 0  # assignments received (tests and logs)
        self._owned: dict[int, range] = {}  # partition -> its buckets
        self._buckets: frozenset[int] = frozenset()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None

    def start(self) -> None:
        from confluent_kafka import Consumer

        from services.common.kafka import RDKAFKA_LOG

        self._consumer = Consumer(self.config, logger=RDKAFKA_LOG)
        meta = self._consumer.list_topics(self.topic, timeout=30)
        tmeta = meta.topics.get(self.topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise RuntimeError(f"shares topic {self.topic!r}: {tmeta and tmeta.error}")
        self.partitions = len(tmeta.partitions)
        self._consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )
        self._thread = threading.Thread(target=self._poll, name="refresh-share", daemon=True)
        self._thread.start()

    def wait_assigned(self, timeout_s: float) -> bool:
        """Block until the group has given this member its first assignment."""
        with self._cond:
            return self._cond.wait_for(lambda: self.assignments > 0, timeout_s)

    def owned(self) -> frozenset[int] | None:
        with self._cond:
            return self._buckets

    def ranges(self) -> list[range]:
        with self._cond:
            return [self._owned[p] for p in sorted(self._owned)]

    def claim(self, user_ids: Sequence[str]) -> list[int]:
        with self._cond:
            keep = [i for i, u in enumerate(user_ids) if layout.bucket(u) in self._buckets]
            if keep:
                self._in_flight += 1
            return keep

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._consumer is not None:
            self._consumer.close()  # leaves the group (on_revoke runs here)
            self._consumer = None

    # ----- the polling thread ------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._consumer.poll(0.2)
                if msg is not None and msg.error() is not None:
                    log.warning("refresh share: %s", msg.error())
            except Exception:
                log.exception("refresh share: poll failed; holding no buckets until it works")
                self._set({})
                self._stop.wait(1.0)

    def _set(self, owned: dict[int, range]) -> None:
        with self._cond:
            self._owned = owned
            self._buckets = frozenset(b for r in owned.values() for b in r)

    def _assigned(self, _c: Any, tps: list[Any]) -> None:
        with self._cond:
            owned = dict(self._owned)
        for tp in tps:
            owned[tp.partition] = bucket_range(tp.partition, self.partitions)
        self._set(owned)
        with self._cond:
            self.assignments += 1
            self._cond.notify_all()
        log.info(
            "refresh share: %d of %d bucket ranges (%d buckets): partitions %s",
            len(owned), self.partitions, len(self._buckets), sorted(owned),
        )  # fmt: skip

    def _revoked(self, _c: Any, tps: list[Any], fence: bool = True) -> None:
        gone = {tp.partition for tp in tps}
        with self._cond:
            owned = {p: r for p, r in self._owned.items() if p not in gone}
        self._set(owned)
        log.info("refresh share: %d bucket ranges %s", len(gone), "revoked" if fence else "lost")
        if fence:
            with self._cond:
                if not self._cond.wait_for(lambda: self._in_flight <= 0, self.fence_s):
                    log.warning("refresh share: a batch still in flight after %.0f s", self.fence_s)

    def _lost(self, c: Any, tps: list[Any]) -> None:
        self._revoked(c, tps, fence=False)


def group_share(cfg: RefreshConfig, kafka: KafkaConfig) -> GroupShare:
    """The share of `cfg.share_group`, its topic created when missing (not started).

    A dead refresher's buckets move after `cfg.share_session_timeout_ms` (6 s; its own
    setting: the ingest group's production timeout is 45 s) plus a rebalance; heartbeats go
    every fifth of it. The revoke fence waits at most 15 s, or half of
    `kafka.max_poll_interval_ms` (the rebalance timeout librdkafka sends) when shorter.
    """
    from services.common.kafka import rdkafka_config
    from services.common.kafka_admin import TopicSpec, ensure_topics

    if not cfg.share_group:
        raise ValueError("group_share needs refresh.share_group")
    ensure_topics(kafka.bootstrap, [TopicSpec(cfg.share_topic, cfg.share_ranges)])
    conf = {
        **rdkafka_config(kafka.bootstrap, client_id="persona-refresh"),
        "group.id": cfg.share_group,
        "enable.auto.commit": False,
        "auto.offset.reset": "latest",
        "session.timeout.ms": cfg.share_session_timeout_ms,
        "heartbeat.interval.ms": max(cfg.share_session_timeout_ms // 5, 100),
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
    }
    return GroupShare(conf, cfg.share_topic, min(15.0, kafka.max_poll_interval_ms / 2000))
