"""Publishing vectors to the update log (`persona.embeddings`); the record and its key
(`<version>/<user id>`, and why the version is in it) are `contract.updates`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from contract.updates import encode_update, log_key
from services.store.protocols import Vectors
from services.store.records import StoredVector

log = logging.getLogger(__name__)


class Publisher:
    """Sends vectors and waits for the broker's acks (`flush`), so that the caller writes the
    store only after the log has them: a crash leaves the log ahead of the store, never
    behind (a replay republishes; the compacted log keeps the last value per version and user).

    `producer`: `services.common.kafka.producer(...)` (an `AckedProducer`), or anything with
    its `send(topic, key=, value=, headers=)` and `flush(timeout_s)`, which raises unless
    every record was acknowledged.
    """

    def __init__(self, producer: Any, topic: str, flush_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s

    def publish(
        self, vectors: Sequence[StoredVector], headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """`headers` go on every record (the batch's trace context, `traceparent`)."""
        for v in vectors:
            self.producer.send(
                self.topic,
                key=log_key(v.model_version, v.user_id),
                value=_value(v),
                headers=headers or None,
            )
        # raises a send's error, or on acks not in time: the store write must not follow
        self.producer.flush(self.flush_timeout_s)

    def tombstones(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Send a tombstone (key `<version>/<user id>`, no value) per (user, version) and
        wait for the acks: every replica's index follower drops the user from that version's
        index, and compaction drops the user's vectors from the log."""
        for uid, ver in pairs:
            self.producer.send(self.topic, key=log_key(ver, uid), value=None)
        self.producer.flush(self.flush_timeout_s)  # raises: the caller must retry the forget

    def close(self) -> None:
        try:
            self.producer.flush(self.flush_timeout_s)
        finally:
            self.producer.close(self.flush_timeout_s)


def _value(v: StoredVector) -> bytes:
    return encode_update(
        v.user_id, v.vector, v.model_version, v.computed_at_ms, v.n_events, v.window_version,
        v.scores,
    )  # fmt: skip


def republish_heads(
    vectors: Vectors,
    publisher: Publisher,
    stale: Sequence[tuple[str, str]],
    headers: list[tuple[str, bytes]] | None = None,
) -> int:
    """Vectors the store skipped as older than its head (`WriteResult.stale`: a batch of the
    same user from a newer window committed first, two refreshers overlapping on a bucket)
    were published already, after that head: the log and every index following it would
    keep the older one. The stored heads are published again after them; returns how many."""
    users: dict[str, list[str]] = {}
    for user, ver in stale:
        users.setdefault(ver, []).append(user)
    heads = [vs[0] for ver, us in users.items() for vs in vectors.get_batch(us, ver) if vs]
    if heads:
        publisher.publish(heads, headers)
    return len(heads)
