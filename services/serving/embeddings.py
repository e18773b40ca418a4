"""GetEmbeddings as a plain function: validate, resolve the version once, one batched read
on the calling thread (`VectorStore.read_batch`, bounded by the request's budget), vectors
decoded into one (N, D) array in request order; the outcome scores, when asked for, come
from the same records (LAYOUT.md, layout 2) and the version's score columns.

With a short-term head for the version (`shortterm.py`) and a part other than "nearline",
the read also brings each user's events after the vector's marker (`read_recent`, same
round trip) and the rows become nearline + the head's delta ("combined", the default) or
the delta alone ("short_term"). History rows stay nearline."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from services.serving import validate
from services.serving.config import Limits
from services.serving.errors import precondition
from services.serving.ports import IndexSource, VectorReader
from services.serving.shortterm import Folded, Head, HeadSource, Part, fold
from services.serving.store_calls import Budget, StoreCaller
from services.serving.versions import ScoreColumn, VersionResolver
from services.store.recent import Recent
from services.store.records import VectorBatch

if TYPE_CHECKING:
    from services.index.prior import Prior

Status = Literal["found", "not_found", "fallback"]
STATUSES: tuple[Status, ...] = ("found", "not_found", "fallback")  # EmbeddingsResult.status codes
FOUND, NOT_FOUND, FALLBACK = range(3)


@dataclass(frozen=True, slots=True)
class EmbeddingsQuery:
    user_ids: Sequence[str]
    model_version: str = ""  # "" = active
    history_depth: int = 0
    fallback: bool = False
    include_scores: bool = False
    part: Part = "default"  # combined when the version has a head, else nearline


@dataclass(frozen=True, slots=True)
class EmbeddingsResult:
    """Row i answers user_ids[i]: `status[i]` (FOUND, NOT_FOUND or FALLBACK), `rows[i]` its
    vector (zeros when not found, the prior on fallback), `stored` its stored values in
    request order (newest first, at most 1 + history_depth; `stored.count[i]` = 0 unless
    found)."""

    version: str
    status: np.ndarray  # (N,) uint8, codes into STATUSES
    rows: np.ndarray  # (N, D) float32
    stored: VectorBatch  # (N, 1 + depth, D) and its (N, 1 + depth) metadata
    prior: Prior | None  # set when some row is the fallback
    columns: tuple[ScoreColumn, ...] = ()  # the score columns, when asked for and stored
    scores: np.ndarray | None = None  # (N, 1 + depth, S) float32, NaN where none; S = columns
    part: Part = "nearline"  # what `rows` hold: nearline, short_term or combined
    head_events: np.ndarray | None = None  # (N,) int32 events the head folded into each row
    # (N,) int64 ts_ms of the newest event in each row: the head's newest folded event, else
    # the stored vector's marker (0: no marker, not found, fallback)
    newest_event_ms: np.ndarray | None = None
    # users whose new events the head folded from the short-term state / from the window /
    # that ingest had folded already (its delta)
    short_term_sources: tuple[int, int, int] = (0, 0, 0)

    def history_scores(self) -> np.ndarray:
        """The scores of `history_rows`, same order: (R, S)."""
        if self.scores is None or self.scores.shape[1] == 1:
            return np.zeros((0, len(self.columns)), np.float32)
        older = np.arange(1, self.scores.shape[1])  # (H - 1,)
        return self.scores[:, 1:][older[None, :] < self.stored.count[:, None]]

    @property
    def statuses(self) -> list[Status]:
        """`status` by name."""
        return [STATUSES[c] for c in self.status.tolist()]

    def history_rows(self) -> np.ndarray:
        """The older stored vectors of every user, user order then newest first: (R, D)."""
        if self.stored.vectors.shape[1] == 1:  # no history asked for
            return self.stored.vectors[:0, 0]
        older = np.arange(1, self.stored.vectors.shape[1])  # (H - 1,)
        mask = older[None, :] < self.stored.count[:, None]  # (N, H - 1)
        return self.stored.vectors[:, 1:][mask]


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
    heads: HeadSource | None = None,
) -> EmbeddingsResult:
    ids = validate.user_ids(q.user_ids, "user_ids", limits.max_batch, limits.max_id_bytes)
    depth = validate.int_range(q.history_depth, "history_depth", 0, limits.max_history)
    version = versions.resolve(q.model_version, budget)
    head = None if q.part == "nearline" or heads is None else heads.head(version)
    if q.part == "short_term" and head is None:
        raise precondition(f"model version {version} has no short-term head")
    if head is not None and head.out_dim != dim:
        raise precondition(f"the short-term head of {version} has {head.out_dim} components; "
                           f"this server serves dimension {dim}")  # fmt: skip
    uniq = list(dict.fromkeys(ids))
    recent: Recent | None = None
    if head is None:
        got = caller.call_inline(
            lambda deadline: store.read_batch(uniq, version, 1 + depth, deadline),
            budget,
            "read vectors",
        )
    else:
        most, h = head.max_events, head.row_dim
        got, recent = caller.call_inline(
            lambda deadline: store.read_recent(uniq, version, 1 + depth, most, deadline, row_dim=h),
            budget,
            "read vectors and recent events",
        )
    if got.dim not in (0, dim):
        raise precondition(
            f"stored vectors of version {version} have {got.dim} components; "
            f"this server serves dimension {dim}"
        )
    if got.dim == 0:  # nobody found
        got = replace(got, vectors=np.zeros((len(uniq), got.vectors.shape[1], dim), np.float32))
    folded: Folded | None = None
    if head is not None and recent is not None:  # once per distinct id (and counted so)
        folded = fold(head, got.vectors[:, 0], got.count > 0, recent)
    if len(uniq) != len(ids):  # duplicates: each gets its entry
        at = {u: i for i, u in enumerate(uniq)}
        pos = np.fromiter((at[u] for u in ids), np.int64, len(ids))
        got = _take(got, pos)
        folded = None if folded is None else folded.take(pos)
    n = len(ids)
    rows = got.vectors[:, 0].copy()  # (N, D), zeros where not found
    missing = got.count == 0  # (N,)
    status = np.where(missing, NOT_FOUND, FOUND).astype(np.uint8)
    # a SHORT_TERM row is the head's part alone: the prior (a nearline vector) is no stand-in
    # for it (it was written into the rows, then replaced by zeros, labelled FALLBACK_PRIOR)
    wants_prior = q.fallback and missing.any() and q.part != "short_term"
    prior = _prior(index, version) if wants_prior else None
    if prior is not None:
        rows[missing] = prior.vector
        status[missing] = FALLBACK
    marks = got.marker_ts_ms
    newest = np.zeros(n, np.int64) if marks is None else np.where(missing, 0, marks[:, 0])
    part: Part = "nearline"
    if folded is not None:
        newest = np.where(folded.events > 0, folded.newest_ms, newest)
        part = "short_term" if q.part == "short_term" else "combined"
        rows = folded.short if part == "short_term" else rows + folded.short
    head_events = None if folded is None else folded.events
    columns: tuple[ScoreColumn, ...] = ()
    scores = None
    if q.include_scores:
        columns = versions.score_columns(version, budget)
        scores = _scores(got, columns)
        if folded is not None and head is not None:
            _rescore(head, scores, got.vectors[:, 0] + folded.short, folded.events > 0)
    sources = (
        (0, 0, 0) if folded is None else (folded.from_state, folded.from_window, folded.from_delta)
    )
    return EmbeddingsResult(version, status, rows, got, prior, columns, scores, part,
                            head_events, newest, sources)  # fmt: skip


def _scores(got: VectorBatch, columns: tuple[ScoreColumn, ...]) -> np.ndarray:
    """(N, H, S) stored scores for S = len(columns) columns: NaN where a value has none (not
    found, or written without scores)."""
    n, h = got.count.shape[0], got.computed_at_ms.shape[1]
    out = np.full((n, h, len(columns)), np.nan, np.float32)
    if got.scores is not None and columns:
        w = min(got.scores.shape[2], len(columns))
        out[:, :, :w] = got.scores[:, :, :w]
    return out


def _rescore(head: Head, scores: np.ndarray, combined: np.ndarray, moved: np.ndarray) -> None:
    """The newest scores of the rows the head `moved` ((N,) bool), in place: the version's
    outcome heads applied to the combined vectors (N, D), so propensities follow the user's
    newest events as the vector does; unchanged where the version has no outcome heads or
    its stored columns are another number than the heads serve."""
    rows = np.flatnonzero(moved)
    if not len(rows):
        return
    fresh = head.scores(combined[rows])
    if fresh is not None and fresh.shape[1] == scores.shape[2]:
        scores[rows, 0] = fresh


def _take(b: VectorBatch, pos: np.ndarray) -> VectorBatch:
    """The batch's users at `pos` (N',) in that order."""
    scores = None if b.scores is None else b.scores[pos]
    marks = None if b.marker_ts_ms is None else b.marker_ts_ms[pos]
    return VectorBatch(b.vectors[pos], b.count[pos], b.computed_at_ms[pos], b.n_events[pos],
                       b.window_version[pos], scores, marks)  # fmt: skip


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
