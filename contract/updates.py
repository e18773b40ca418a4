"""The update-log record (`persona.embeddings`): key `<version>/<user id>`, value a
`persona.v1.EmbeddingUpdate`; an empty value is a tombstone (the user's vector is gone).

The key carries the model version because two versions are written side by side during a
back-fill and after a cutover (the previous one stays fresh for an instant rollback): with
the user id alone, log compaction would keep whichever version was written last and a new
replica following the other version would miss that user. Version ids never hold `/`
(`contract.versions`). The refresher writes these records, the index follower reads them
(`services/index/updates.py`).

>>> log_key("v1", "u1")
b'v1/u1'
"""

from __future__ import annotations

import numpy as np
from persona.v1.embeddings_pb2 import EmbeddingUpdate


def log_key(model_version: str, user_id: str) -> bytes:
    """The update-log key of one user's vector of one version."""
    return f"{model_version}/{user_id}".encode()


def encode_update(
    user_id: str,
    vector: np.ndarray,
    model_version: str,
    computed_at_ms: int = 0,
    n_events: int = 0,
    window_version: int = 0,
    scores: np.ndarray | None = None,
) -> bytes:
    """The update-log value of a vector (D,) and its outcome scores (S,), as little-endian
    float32."""
    vec = np.asarray(vector, dtype="<f4")
    sc = b"" if scores is None else np.asarray(scores, dtype="<f4").tobytes()
    return EmbeddingUpdate(
        user_id=user_id,
        model_version=model_version,
        computed_at_ms=computed_at_ms,
        vector=vec.tobytes(),
        dim=int(vec.size),
        n_events=n_events,
        window_version=window_version,
        scores=sc,
    ).SerializeToString()
