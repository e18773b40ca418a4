"""GetEmbeddings as a plain function: validate, resolve the version once, one batched read,
vectors packed into one (N, D) array in request order."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.serving import validate
from services.serving.config import Limits
from services.serving.errors import precondition
from services.serving.ports import IndexSource, Prior, VectorReader
from services.serving.store_calls import Budget, StoreCaller
from services.serving.versions import VersionResolver
from services.store.vectors import StoredVector

Status = Literal["found", "not_found", "fallback"]


@dataclass(frozen=True, slots=True)
class EmbeddingsQuery:
    user_ids: Sequence[str]
    model_version: str = ""  # "" = active
    history_depth: int = 0
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class EmbeddingsResult:
    """rows[i] is user_ids[i]'s vector (zeros when not found); `latest[i]` its stored value
    (None unless found), `history[i]` its older values, newest first."""

    version: str
    statuses: list[Status]
    rows: np.ndarray  # (N, D) float32
    latest: list[StoredVector | None]
    history: list[list[StoredVector]]
    prior: Prior | None  # set when some row is the fallback


def get_embeddings(
    q: EmbeddingsQuery,
    *,
    store: VectorReader,
    versions: VersionResolver,
    index: IndexSource,
    caller: StoreCaller,
    limits: Limits,
    dim: int,
    budget: Budget,
) -> EmbeddingsResult:
    ids = validate.user_ids(q.user_ids, "user_ids", limits.max_batch, limits.max_id_bytes)
    depth = validate.int_range(q.history_depth, "history_depth", 0, limits.max_history)
    version = versions.resolve(q.model_version, budget)
    uniq = list(dict.fromkeys(ids))
    got = caller.call(
        lambda: store.get_batch(uniq, version, history=1 + depth), budget, "read vectors"
    )
    by_id = dict(zip(uniq, got, strict=True))
    n = len(ids)
    rows = np.zeros((n, dim), dtype=np.float32)  # (N, D)
    statuses: list[Status] = ["not_found"] * n
    latest: list[StoredVector | None] = [None] * n
    history: list[list[StoredVector]] = [[] for _ in range(n)]
    missing: list[int] = []
    for i, u in enumerate(ids):
        values = by_id[u]
        if not values:
            missing.append(i)
            continue
        head = values[0]
        if head.vector.shape != (dim,):
            raise precondition(
                f"stored vectors of version {version} have {head.vector.size} components; "
                f"this server serves dimension {dim}"
            )
        rows[i] = head.vector
        statuses[i], latest[i], history[i] = "found", head, values[1 : 1 + depth]
    prior = _prior(index, version) if q.fallback and missing else None
    if prior is not None:
        rows[missing] = prior.vector
        for i in missing:
            statuses[i] = "fallback"
    return EmbeddingsResult(version, statuses, rows, latest, history, prior)


def _prior(index: IndexSource, version: str) -> Prior | None:
    """The prior of `version` when the served index holds that version (it holds only the
    active one); else None and the users stay NOT_FOUND."""
    served = index.current()
    if served is None or served.version != version:
        return None
    return served.index.prior()


def age_seconds(computed_at_ms: int, now_s: float | None = None) -> float:
    """Seconds since computed_at_ms by the wall clock (ages compare wall times)."""
    now = time.time() if now_s is None else now_s
    return max(0.0, now - computed_at_ms / 1000.0)
