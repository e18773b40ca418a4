"""Decoding update-log records (`persona.embeddings`) into index operations.

Pure functions, no Kafka: a batch of (key, value) pairs becomes the last operation per
user, upserts and deletions, plus counts of what was skipped and why.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from proto.embeddings_pb2 import EmbeddingUpdate

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Batch:
    """Last operation per user in a run of records. `upserts` maps user -> vector (D,)."""

    upserts: dict[str, np.ndarray] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    skipped: Counter[str] = field(default_factory=Counter)  # "ignored" | "invalid" -> count


def decode_batch(
    records: Iterable[tuple[bytes | None, bytes | None]], dim: int, model_version: str | None
) -> Batch:
    """Folds records, in log order, into the last value per key.

    Keys are `<version>/<user id>` as the refresher writes them; a plain user id is read too.

    A record with an empty or missing value is a tombstone (delete). A record of another
    model version is ignored when `model_version` is set (the user's earlier value stands).
    A record that cannot be trusted (no key, bad UTF-8, undecodable proto, key and user_id
    disagreeing, wrong length, NaN or zero vector) is counted "invalid" and logged.
    """
    batch = Batch()
    for key, value in records:
        raw = _user(key)
        if raw is None:
            _invalid(batch, key, "key is missing or not UTF-8")
            continue
        if not value:
            # Tombstone. Keys are `<version>/<user id>` (services/refresh/publish.py); a key
            # whose prefix is another version is that version's delete; one without a
            # version prefix is a plain user id (older writers, tools).
            ver, _, rest = raw.partition("/")
            versioned = bool(rest) and _VERSION.fullmatch(ver) is not None
            if versioned and model_version is not None and ver != model_version:
                batch.skipped["ignored"] += 1
                continue
            user = rest if versioned else raw
            batch.upserts.pop(user, None)
            batch.deletes.add(user)
            continue
        try:
            update = EmbeddingUpdate.FromString(value)
        except DecodeError:
            _invalid(batch, key, "value is not an EmbeddingUpdate")
            continue
        if model_version is not None and update.model_version != model_version:
            batch.skipped["ignored"] += 1
            continue
        prefix = f"{update.model_version}/"
        user = raw[len(prefix) :] if raw.startswith(prefix) else raw
        problem = _vector_problem(update, user, dim)
        if problem:
            _invalid(batch, key, problem)
            continue
        batch.deletes.discard(user)
        batch.upserts[user] = np.frombuffer(update.vector, dtype="<f4").astype(np.float32)
    return batch


_VERSION = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the registry's version ids


def _user(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _vector_problem(update: EmbeddingUpdate, user: str, dim: int) -> str | None:
    if update.user_id and update.user_id != user:
        return f"user_id {update.user_id!r} differs from the key"
    if len(update.vector) != 4 * dim or (update.dim and update.dim != dim):
        return f"vector has {len(update.vector)} bytes, dim {update.dim}; index dim is {dim}"
    vec = np.frombuffer(update.vector, dtype="<f4")
    if not np.isfinite(vec).all() or not vec.any():
        return "vector has NaN/inf values or is all zeros"
    return None


def _invalid(batch: Batch, key: bytes | None, why: str) -> None:
    batch.skipped["invalid"] += 1
    log.warning("update-log record skipped (key %r): %s", key[:64] if key else key, why)


def encode_update(
    user_id: str, vector: np.ndarray, model_version: str, computed_at_ms: int = 0
) -> bytes:
    """The value a producer writes for a vector (D,): used by tests and tools."""
    vec = np.asarray(vector, dtype="<f4")
    return EmbeddingUpdate(
        user_id=user_id,
        model_version=model_version,
        computed_at_ms=computed_at_ms,
        vector=vec.tobytes(),
        dim=int(vec.size),
    ).SerializeToString()
