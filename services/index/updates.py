"""Decoding update-log records (`persona.embeddings`) into index operations.

Pure functions, no Kafka: a batch of (key, value) pairs becomes the last operation per
user, upserts and deletions, plus counts of what was skipped and why.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError
from persona.v1.embeddings_pb2 import EmbeddingUpdate

from contract.versions import is_version

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
    # Pass 1, per record in log order: the cheap checks, and the operations to fold. The
    # vectors' values are checked in pass 2, all at once (one array, not one per record).
    ops: list[tuple[str, bytes | None, int]] = []  # (user, key, vector index or -1: delete)
    vecs: list[bytes] = []
    for key, value in records:
        raw = _user(key)
        if raw is None:
            _invalid(batch, key, "key is missing, not UTF-8 or holds NUL")
            continue
        if not value:
            # Tombstone. Keys are `<version>/<user id>` (contract.updates); a key
            # whose prefix is another version is that version's delete; one without a
            # version prefix is a plain user id (older writers, tools).
            ver, _, rest = raw.partition("/")
            versioned = bool(rest) and is_version(ver)
            if versioned and model_version is not None and ver != model_version:
                batch.skipped["ignored"] += 1
                continue
            ops.append((rest if versioned else raw, key, -1))
            continue
        try:
            update = EmbeddingUpdate.FromString(value)
        except DecodeError:
            _invalid(batch, key, "value is not an EmbeddingUpdate")
            continue
        mv = update.model_version
        if model_version is not None and mv != model_version:
            batch.skipped["ignored"] += 1
            continue
        prefix = f"{mv}/"
        user = raw[len(prefix) :] if raw.startswith(prefix) else raw
        problem = "no user id after the version prefix" if not user else None
        problem = problem or _shape_problem(update, user, dim)
        if problem:
            _invalid(batch, key, problem)
            continue
        ops.append((user, key, len(vecs)))
        vecs.append(update.vector)
    # Pass 2: NaN / inf / all-zero vectors refused, then the operations folded in order
    # (a refused record leaves the user's earlier value in the run standing).
    arr = np.frombuffer(b"".join(vecs), dtype="<f4").astype(np.float32).reshape(len(vecs), dim)
    good = np.isfinite(arr).all(axis=1) & arr.any(axis=1)  # (N,) bool
    ok: list[bool] = np.asarray(good).tolist()
    for user, key, i in ops:
        if i < 0:
            batch.upserts.pop(user, None)
            batch.deletes.add(user)
        elif ok[i]:
            batch.deletes.discard(user)
            batch.upserts[user] = arr[i]
        else:
            _invalid(batch, key, "vector has NaN/inf values or is all zeros")
    return batch


def _user(key: bytes | None) -> str | None:
    if not key or b"\x00" in key:  # the index refuses NUL in ids (rows.checked_ids)
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _shape_problem(update: EmbeddingUpdate, user: str, dim: int) -> str | None:
    uid = update.user_id
    if uid and uid != user:
        return f"user_id {uid!r} differs from the key"
    n = len(update.vector)
    if n != 4 * dim or (update.dim and update.dim != dim):
        return f"vector has {n} bytes, dim {update.dim}; index dim is {dim}"
    return None


def _invalid(batch: Batch, key: bytes | None, why: str) -> None:
    batch.skipped["invalid"] += 1
    log.warning("update-log record skipped (key %r): %s", key[:64] if key else key, why)
