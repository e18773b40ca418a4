"""Publishing vectors to the update log (`persona.embeddings`, key = `<version>/<user id>`).

The key carries the model version because two versions are written side by side during a
back-fill and after a cutover (the previous one stays fresh for an instant rollback): with
the user id alone, log compaction would keep whichever version was written last and a new
replica following the other version would miss that user. Version ids never hold `/`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from proto.embeddings_pb2 import EmbeddingUpdate
from services.store.records import StoredVector

log = logging.getLogger(__name__)


def log_key(model_version: str, user_id: str) -> bytes:
    """The update-log key of one user's vector of one version."""
    return f"{model_version}/{user_id}".encode()


def encode_update(v: StoredVector) -> bytes:
    vec = np.asarray(v.vector, dtype="<f4")
    return EmbeddingUpdate(
        user_id=v.user_id,
        model_version=v.model_version,
        computed_at_ms=v.computed_at_ms,
        vector=vec.tobytes(),
        dim=int(vec.size),
        n_events=v.n_events,
        window_version=v.window_version,
    ).SerializeToString()


class Publisher:
    """Sends vectors and waits for the broker's acks (`flush`), so that the caller writes the
    store only after the log has them: a crash leaves the log ahead of the store, never
    behind (a replay republishes; the compacted log keeps the last value per version and user)."""

    def __init__(self, producer: Any, topic: str, flush_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s

    def publish(self, vectors: Sequence[StoredVector]) -> None:
        futures = [
            self.producer.send(
                self.topic, key=log_key(v.model_version, v.user_id), value=encode_update(v)
            )
            for v in vectors
        ]
        self.producer.flush(timeout=self.flush_timeout_s)
        for f in futures:
            f.get(timeout=0)  # raises the send's error, if any: the store write must not follow

    def close(self) -> None:
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        finally:
            self.producer.close()
