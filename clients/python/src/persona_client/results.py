"""Responses as numpy arrays: a GetEmbeddingsResponse is columnar (a packed vector block and a
packed array per metadata field), so decoding it is one `np.frombuffer` for the vectors and
one array per column, with no loop over users.

Example: two users asked with `history_depth=1`, "a" found with one older vector, "b" not
found::

    statuses        [FOUND, NOT_FOUND]
    vectors         (2, D): [a_newest, zeros]
    meta.n_events   [12, 0]
    history_counts  [1, 0]
    history_vectors (1, D): [a_older]        Embeddings.history(0) -> (1, D)

With `include_scores` and a version that stores outcome scores, `scores` is (N, S) (NaN
where a row has none, e.g. "b") and `history_scores` (R, S); column j is the version's
`score_columns(info, version)[j]` from GetModelInfo. Otherwise both have S = 0 columns.

`part` says what `vectors` holds ("nearline", "short_term" or "combined": the nearline vector
plus the version's short-term head over the events since it); per row, `meta.newest_event_ms`
is the newest user event in it and `meta.short_term_events` how many the head folded in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from persona.v1 import service_pb2 as pb

FOUND = pb.EMBEDDING_STATUS_FOUND
NOT_FOUND = pb.EMBEDDING_STATUS_NOT_FOUND
FALLBACK_PRIOR = pb.EMBEDDING_STATUS_FALLBACK_PRIOR
DTYPES = {pb.VECTOR_ENCODING_FLOAT32: "<f4", pb.VECTOR_ENCODING_FLOAT16: "<f2"}
PARTS = {
    pb.VECTOR_PART_NEARLINE: "nearline",
    pb.VECTOR_PART_SHORT_TERM: "short_term",
    pb.VECTOR_PART_COMBINED: "combined",
}


@dataclass(frozen=True, slots=True)
class VectorMeta:
    """Metadata of a block of rows, one (R,) array per field; entry i describes row i."""

    computed_at_ms: np.ndarray  # (R,) int64, ms since the Unix epoch; 0: no vector
    age_seconds: np.ndarray  # (R,) float64, by the server's clock when it answered
    n_events: np.ndarray  # (R,) int32, events the vector saw (0 for the prior)
    window_version: np.ndarray  # (R,) int64
    # (R,) int64 ts_ms of the newest event in the row (the short-term head's newest folded
    # event, else the nearline vector's newest); 0: unknown (a server or vector from before)
    newest_event_ms: np.ndarray
    short_term_events: np.ndarray  # (R,) int32 events the short-term head folded in

    @classmethod
    def from_proto(cls, cols: pb.VectorMetaColumns) -> VectorMeta:
        r = len(cols.computed_at_ms)
        return cls(
            np.array(cols.computed_at_ms, np.int64),
            np.array(cols.age_seconds, np.float64),
            np.array(cols.n_events, np.int32),
            np.array(cols.window_version, np.int64),
            np.array(cols.newest_event_ms or np.zeros(r), np.int64),  # older servers: none
            np.array(cols.short_term_events or np.zeros(r), np.int32),
        )


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One GetEmbeddings answer; row i answers `user_ids[i]` (request order, duplicates
    included). `vectors`, `history_vectors`, `scores` and `history_scores` are read-only views
    of the response bytes (float32, or float16 when asked for): `.copy()` them to write."""

    model_version: str
    user_ids: tuple[str, ...]  # as requested
    status: np.ndarray  # (N,) int32 EmbeddingStatus values
    vectors: np.ndarray  # (N, D); zeros where NOT_FOUND
    meta: VectorMeta  # (N,) columns
    history_counts: np.ndarray  # (N,) int64, older vectors per user
    history_vectors: np.ndarray  # (R, D), R = history_counts.sum(), user order, newest first
    history_meta: VectorMeta  # (R,) columns
    scores: np.ndarray  # (N, S) outcome probabilities, NaN where none; S = 0 when not asked
    history_scores: np.ndarray  # (R, S), the history rows' scores
    part: str = "nearline"  # what `vectors` holds: nearline, short_term or combined

    @property
    def found(self) -> np.ndarray:
        """(N,) bool: the row is the user's own vector."""
        return self.status == FOUND

    @property
    def status_names(self) -> list[str]:
        """`status` as names, e.g. ["EMBEDDING_STATUS_FOUND", ...]."""
        return [pb.EmbeddingStatus.Name(s) for s in self.status.tolist()]

    def history(self, i: int) -> np.ndarray:
        """(h_i, D): the older vectors of row i, newest first (a view)."""
        ends = np.cumsum(self.history_counts)
        start = int(ends[i] - self.history_counts[i])
        return self.history_vectors[start : int(ends[i])]

    def as_dict(self) -> dict[str, np.ndarray]:
        """user id -> vector, for the rows that are the user's own vector."""
        return {u: self.vectors[i] for i, u in enumerate(self.user_ids) if self.status[i] == FOUND}


def embeddings_from_proto(resp: pb.GetEmbeddingsResponse, user_ids: tuple[str, ...]) -> Embeddings:
    """Decode a GetEmbeddingsResponse for the request's `user_ids`.

    Raises:
        ValueError: an unknown encoding, or the response's sizes disagree with each other
            or with the request (a server bug or a proxy that cut the message).
    """
    dtype = DTYPES.get(resp.encoding)
    if dtype is None:
        raise ValueError(f"unknown vector encoding {resp.encoding}")
    n, dim = len(resp.statuses), resp.dim
    if n != len(user_ids):
        raise ValueError(f"{n} rows for {len(user_ids)} requested ids")
    counts = np.array(resp.history_counts, np.int64)  # (N,), or empty: no history asked
    if not len(counts):
        counts = np.zeros(n, np.int64)
    elif len(counts) != n:
        raise ValueError(f"{len(counts)} history counts for {n} rows")
    vectors = _rows(resp.vectors, dtype, n, dim, "vectors")
    n_hist, n_scores = int(counts.sum()), resp.n_scores
    history = _rows(resp.history_vectors, dtype, n_hist, dim, "history_vectors")
    if n_scores < 0:
        raise ValueError(f"n_scores {n_scores}")
    scores = _rows(resp.scores, dtype, n, n_scores, "scores")
    history_scores = _rows(resp.history_scores, dtype, n_hist, n_scores, "history_scores")
    return Embeddings(
        model_version=resp.model_version,
        user_ids=user_ids,
        status=np.array(resp.statuses, np.int32),
        vectors=vectors,
        meta=VectorMeta.from_proto(resp.meta),
        history_counts=counts,
        history_vectors=history,
        history_meta=VectorMeta.from_proto(resp.history_meta),
        scores=scores,
        history_scores=history_scores,
        part=PARTS.get(resp.part, "nearline"),  # unset: a server from before the parts
    )


def score_columns(info: pb.GetModelInfoResponse, version: str) -> list[tuple[str, int]]:
    """What column j of `Embeddings.scores` is under `version`: (outcome, horizon_ms), e.g.
    ("(any)", 3600000) for P(any event within 1 h); [] when the version stores no scores.

    Raises:
        KeyError: `info` (a GetModelInfo answer) does not list `version`.
    """
    for v in info.versions:
        if v.version == version:
            return [(c.outcome, int(c.horizon_ms)) for c in v.score_columns]
    raise KeyError(f"GetModelInfo lists no version {version!r}")


def _rows(raw: bytes, dtype: str, rows: int, dim: int, name: str) -> np.ndarray:
    """(rows, dim) view of packed little-endian components."""
    width = np.dtype(dtype).itemsize
    if len(raw) != rows * dim * width:
        raise ValueError(f"{name}: {len(raw)} bytes for {rows} rows of {dim} x {width}")
    return np.frombuffer(raw, dtype).reshape(rows, dim)


@dataclass(frozen=True, slots=True)
class Lookalikes:
    """FindLookalikes' answer, best first."""

    model_version: str
    user_ids: list[str]
    scores: np.ndarray  # (K,) float32 cosine similarities, descending
    seeds_used: int
    seeds_missing: int

    @classmethod
    def from_proto(cls, resp: pb.FindLookalikesResponse) -> Lookalikes:
        return cls(
            resp.model_version,
            [n.user_id for n in resp.neighbors],
            np.array([n.score for n in resp.neighbors], np.float32),
            resp.seeds_used,
            resp.seeds_missing,
        )
