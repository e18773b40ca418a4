"""FindLookalikes and GetModelInfo as plain functions.

One index is served: the active version's (an index per version is not kept; a replica
switches its index when the active version changes, see `holder.py`). A request pinning
another known version gets FAILED_PRECONDITION, an unknown one INVALID_ARGUMENT.

Order of work: validate; take the served index; with a score range, find the range's score
column in that version (before any search, so a bad column costs no search); read the seeds'
vectors (index, else store); search; with a score range, read the candidates' newest stored
scores in one batched store read (`read_batch`, inside the call's budget) and keep the best k
whose score lies in the range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from services.serving import validate
from services.serving.config import Limits
from services.serving.errors import invalid, not_found, precondition
from services.serving.ports import IndexSource, VectorReader
from services.serving.store_calls import Budget, StoreCaller
from services.serving.versions import ScoreColumn, VersionResolver

if TYPE_CHECKING:
    from services.index.holder import ServedIndex


@dataclass(frozen=True, slots=True)
class LookalikeQuery:
    """Exactly one of user_id, vector, seeds is set (the servicer reads the proto oneof)."""

    k: int
    user_id: str | None = None
    vector: Sequence[float] | None = None
    seeds: Sequence[str] | None = None
    exclude_seeds: bool = False
    min_score: float | None = None
    model_version: str = ""
    seed_mode: Literal["mean", "union"] = "mean"
    score_range: ScoreRange | None = None


@dataclass(frozen=True, slots=True)
class ScoreRange:
    """Keep neighbours with lo <= P(outcome within horizon_ms) <= hi (None: 0 / 1)."""

    outcome: str
    horizon_ms: int
    lo: float | None = None
    hi: float | None = None


# A score range is applied to the k * CANDIDATE_FACTOR nearest users (at most MAX_CANDIDATES,
# at most the index size): a range that holds an eighth of the users near the query still
# fills k on average, while the candidates' scores stay one batched store read (8000 records
# at most: ~3 MB at D = 64 with 50 scores). Near users have similar scores, so a range far
# from the query's own may return fewer than k; the proto says so.
CANDIDATE_FACTOR, MAX_CANDIDATES = 8, 8000


@dataclass(frozen=True, slots=True)
class LookalikeResult:
    version: str
    neighbors: list[tuple[str, float]]
    seeds_used: int
    seeds_missing: int


def find_lookalikes(
    q: LookalikeQuery,
    *,
    store: VectorReader,
    versions: VersionResolver,
    index: IndexSource,
    caller: StoreCaller,
    limits: Limits,
    dim: int,
    budget: Budget,
) -> LookalikeResult:
    given = [x is not None for x in (q.user_id, q.vector, q.seeds)]
    if sum(given) != 1:
        raise invalid("set exactly one of user_id, vector, seeds")
    k = validate.int_range(q.k, "k", 1, limits.max_k)
    min_score = validate.score(q.min_score, "min_score")
    query_vec = None if q.vector is None else validate.vector(q.vector, dim, "vector.values")
    seeds: list[str] = []
    if q.user_id is not None:
        seeds = [validate.one_id(q.user_id, "user_id", limits.max_id_bytes)]
    elif q.seeds is not None:
        seeds = validate.user_ids(q.seeds, "seeds.user_ids", limits.max_seeds, limits.max_id_bytes)
        seeds = list(dict.fromkeys(seeds))
    lo, hi = _bounds(q.score_range)
    served = _served(q.model_version, index, versions, budget)
    column, n = None, k  # n: candidates searched
    if q.score_range is not None:
        r = q.score_range
        column = versions.column_of(served.version, r.outcome, r.horizon_ms, budget)
        n = max(k, min(k * CANDIDATE_FACTOR, MAX_CANDIDATES, served.index.size))

    def done(hits: list[tuple[str, float]], used: int, missing: int) -> LookalikeResult:
        if column is not None:
            hits = _in_range(hits, k, column, lo, hi, served.version, store, caller, budget)
        return LookalikeResult(served.version, hits, used, missing)

    if query_vec is not None:
        return done(served.index.search(query_vec[None, :], n, None, min_score)[0], 0, 0)
    vecs = _seed_vectors(seeds, served, store, caller, budget)  # (S, D) unit rows
    if not len(vecs):
        who = f"user {seeds[0]!r}" if q.user_id is not None else f"none of the {len(seeds)} seeds"
        raise not_found(f"{who} has no vector under model version {served.version}")
    exclude = set(seeds) if q.exclude_seeds else None
    if q.seed_mode == "union" and len(vecs) > 1:
        hits = _union(served.index.search(vecs, n, exclude, min_score), n)
    else:
        mean = vecs.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm < 1e-6:
            raise precondition("the seeds' vectors cancel out (mean is ~0); use SEED_MODE_UNION")
        hits = served.index.search((mean / norm)[None, :], n, exclude, min_score)[0]
    return done(hits, len(vecs), len(seeds) - len(vecs))


def _bounds(r: ScoreRange | None) -> tuple[float, float]:
    """The range's [lo, hi], validated: INVALID_ARGUMENT outside [0, 1] or lo > hi."""
    if r is None:
        return 0.0, 1.0
    lo = 0.0 if r.lo is None else r.lo
    hi = 1.0 if r.hi is None else r.hi
    for name, x in (("score_range.min", lo), ("score_range.max", hi)):
        if not 0.0 <= x <= 1.0:  # NaN fails too
            raise invalid(f"{name} must be a probability in [0, 1], got {x}")
    if lo > hi:
        raise invalid(f"score_range.min ({lo}) is above score_range.max ({hi})")
    return lo, hi


def _in_range(
    hits: list[tuple[str, float]], k: int, column: int, lo: float, hi: float, version: str,
    store: VectorReader, caller: StoreCaller, b: Budget,
) -> list[tuple[str, float]]:  # fmt: skip
    """The best k of `hits` (best first) whose newest stored score in `column` lies in
    [lo, hi]; a user with no stored score (NaN, none written, or gone) is dropped."""
    if not hits:
        return []
    ids = [u for u, _ in hits]
    got = caller.call_inline(
        lambda deadline: store.read_batch(ids, version, 1, deadline), b, "read candidates' scores"
    )
    if got.scores is None or column >= got.scores.shape[2]:
        return []
    s = got.scores[:, 0, column]  # (N,) float32, NaN where none
    keep = (s >= lo) & (s <= hi)  # NaN compares False: dropped
    return [h for h, ok in zip(hits, keep.tolist(), strict=True) if ok][:k]


def _served(pinned: str, index: IndexSource, versions: VersionResolver, b: Budget) -> ServedIndex:
    served = index.current()
    if pinned:
        versions.state_of(pinned, b)  # INVALID_ARGUMENT when unknown or malformed
        if served is not None and pinned != served.version:
            raise precondition(
                f"the lookalike index serves model version {served.version} only; "
                f"{pinned} is not indexed"
            )
    if served is None:
        raise precondition("the lookalike index is not ready (no active version indexed yet)")
    return served


def _seed_vectors(
    seeds: list[str], served: ServedIndex, store: VectorReader, caller: StoreCaller, b: Budget
) -> np.ndarray:
    """Unit vectors (S', D) of the seeds that have one: from the index, else the store."""
    found: dict[str, np.ndarray] = {}
    for u in seeds:
        v = served.index.vector_of(u)
        if v is not None:
            found[u] = v
    missing = [u for u in seeds if u not in found]
    if missing:
        got = caller.call(lambda: store.get_batch(missing, served.version), b, "read seeds")
        for u, values in zip(missing, got, strict=True):
            if values and values[0].vector.shape == (served.index.dim,) and values[0].vector.any():
                found[u] = values[0].vector
    if not found:
        return np.zeros((0, served.index.dim), dtype=np.float32)
    vecs = np.stack([found[u] for u in seeds if u in found]).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _union(per_seed: list[list[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """Merges per-seed neighbour lists by each user's best score, best first."""
    best: dict[str, float] = {}
    for hits in per_seed:
        for u, s in hits:
            if s > best.get(u, -np.inf):
                best[u] = s
    return sorted(best.items(), key=lambda us: (-us[1], us[0]))[:k]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    active: str | None
    states: dict[str, str]
    dim: int
    index: ServedIndex | None
    columns: dict[str, tuple[ScoreColumn, ...]] = field(default_factory=dict)


def model_info(
    *, versions: VersionResolver, index: IndexSource, dim: int, budget: Budget
) -> ModelInfo:
    """The versions with their states and score columns (the retired ones' columns are not
    read: they are no longer served)."""
    active = versions.active(budget)
    states = dict(versions.states(budget))
    columns = {v: versions.score_columns(v, budget) for v, s in states.items() if s != "retired"}
    return ModelInfo(active, states, dim, index.current(), columns)
