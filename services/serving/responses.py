"""The plain functions' results as persona.v1 responses, built with the protobuf library.

GetEmbeddingsResponse is columnar (proto/persona/v1/service.proto): a status per user, one
packed vector block, and the metadata as packed columns (`VectorMetaColumns`), so the
response is a handful of fields whatever the batch size, each set from one array; no
message per user, no hand-written wire bytes.

Example: ids ["a", "b"], history_depth 1, "a" found with an older value, "b" not found::

    statuses        [FOUND, NOT_FOUND]
    vectors         a_newest | zeros                (2 rows of dim components)
    meta            computed_at_ms [t_a1, 0], age_seconds [now - t_a1, 0], ...
    history_counts  [1, 0]
    history_vectors a_older                         (1 row)
    history_meta    computed_at_ms [t_a0], ...
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from persona.v1 import service_pb2 as pb

from services.serving.embeddings import STATUSES, EmbeddingsResult, age_seconds
from services.serving.lookalikes import LookalikeResult, ModelInfo

PB_STATUS = {  # embeddings.STATUSES -> the proto's EmbeddingStatus
    "found": pb.EMBEDDING_STATUS_FOUND,
    "not_found": pb.EMBEDDING_STATUS_NOT_FOUND,
    "fallback": pb.EMBEDDING_STATUS_FALLBACK_PRIOR,
}
_STATUS_CODES = np.array([PB_STATUS[s] for s in STATUSES], np.int32)  # EmbeddingsResult.status
DTYPES: dict[int, tuple[str, pb.VectorEncoding]] = {  # request encoding -> (dtype, named)
    pb.VECTOR_ENCODING_UNSPECIFIED: ("<f4", pb.VECTOR_ENCODING_FLOAT32),
    pb.VECTOR_ENCODING_FLOAT32: ("<f4", pb.VECTOR_ENCODING_FLOAT32),
    pb.VECTOR_ENCODING_FLOAT16: ("<f2", pb.VECTOR_ENCODING_FLOAT16),
}
PB_STATE = {
    "backfilling": pb.MODEL_VERSION_STATE_BACKFILLING,
    "ready": pb.MODEL_VERSION_STATE_READY,
    "active": pb.MODEL_VERSION_STATE_ACTIVE,
    "retired": pb.MODEL_VERSION_STATE_RETIRED,
}


PB_PART = {  # shortterm.Part of a result -> the proto's VectorPart
    "nearline": pb.VECTOR_PART_NEARLINE,
    "short_term": pb.VECTOR_PART_SHORT_TERM,
    "combined": pb.VECTOR_PART_COMBINED,
}


def meta_columns(
    computed_at_ms: np.ndarray, n_events: np.ndarray, window_version: np.ndarray,
    present: np.ndarray, now_s: float, newest_event_ms: np.ndarray | None = None,
    short_term_events: np.ndarray | None = None,
) -> pb.VectorMetaColumns:  # fmt: skip
    """(R,) arrays -> columns; rows not `present` are all 0 (their stored fields are 0
    already; the age is masked here, since it is measured from now). `newest_event_ms`,
    `short_term_events`: None = all 0."""
    ages = np.where(present, np.maximum(0.0, now_s - computed_at_ms / 1000.0), 0.0)  # (R,)
    zeros = np.zeros(len(computed_at_ms), np.int64)
    newest = zeros if newest_event_ms is None else newest_event_ms
    folded = zeros if short_term_events is None else short_term_events
    return pb.VectorMetaColumns(
        computed_at_ms=computed_at_ms.tolist(),
        age_seconds=ages.tolist(),
        n_events=n_events.tolist(),
        window_version=window_version.tolist(),
        newest_event_ms=newest.tolist(),
        short_term_events=folded.tolist(),
    )


def embeddings_response(
    r: EmbeddingsResult, encoding: int, dim: int, now_s: float
) -> pb.GetEmbeddingsResponse:
    """Row i of every column answers the i-th requested id.

    Args:
        r: get_embeddings' result: (N,) statuses, (N, D) rows, the stored values (N, H).
        encoding: the request's VectorEncoding (a key of DTYPES; the caller checked).
        dim: the served dimension (`r.rows` has it).
        now_s: the wall clock that ages are measured against.
    """
    dtype, named = DTYPES[encoding]
    s = r.stored
    ts = s.computed_at_ms[:, 0]  # (N,) the newest value's, 0 where none
    n_events = s.n_events[:, 0]
    window_version = s.window_version[:, 0]
    present = s.count > 0  # (N,)
    if r.prior is not None:  # fallback rows carry the prior's computed_at, no events
        fallback = r.status == STATUSES.index("fallback")
        ts = np.where(fallback, r.prior.computed_at_ms, ts)
        present = present | fallback
    resp = pb.GetEmbeddingsResponse(
        model_version=r.version,
        dim=dim,
        encoding=named,
        statuses=_STATUS_CODES[r.status].tolist(),
        vectors=r.rows.astype(dtype, copy=False).tobytes(),
        meta=meta_columns(
            ts, n_events, window_version, present, now_s, r.newest_event_ms, r.head_events
        ),
        part=PB_PART[r.part],
    )
    if r.scores is not None and r.columns:
        resp.n_scores = len(r.columns)
        rows = r.scores[:, 0]  # (N, S); NaN where not found, so the fallback rows are NaN
        resp.scores = rows.astype(dtype, copy=False).tobytes()
    depth = s.computed_at_ms.shape[1] - 1
    if depth:
        older = np.arange(1, depth + 1)[None, :] < s.count[:, None]  # (N, H - 1)
        hist_ts = s.computed_at_ms[:, 1:][older]  # (R,) user order, newest first
        resp.history_counts.extend(older.sum(axis=1).tolist())
        resp.history_vectors = r.history_rows().astype(dtype, copy=False).tobytes()
        if resp.n_scores:
            resp.history_scores = r.history_scores().astype(dtype, copy=False).tobytes()
        marks = None if s.marker_ts_ms is None else s.marker_ts_ms[:, 1:][older]
        resp.history_meta.CopyFrom(
            meta_columns(hist_ts, s.n_events[:, 1:][older], s.window_version[:, 1:][older],
                         np.ones(len(hist_ts), np.bool_), now_s, marks)
        )  # fmt: skip
    return resp


def lookalikes_response(r: LookalikeResult) -> pb.FindLookalikesResponse:
    return pb.FindLookalikesResponse(
        model_version=r.version,
        neighbors=[pb.Neighbor(user_id=u, score=s) for u, s in r.neighbors],
        seeds_used=r.seeds_used,
        seeds_missing=r.seeds_missing,
    )


def model_info_response(info: ModelInfo) -> pb.GetModelInfoResponse:
    resp = pb.GetModelInfoResponse(
        active_version=info.active or "",
        versions=[
            pb.ModelVersion(
                version=v,
                state=PB_STATE.get(s, pb.MODEL_VERSION_STATE_UNSPECIFIED),
                score_columns=[
                    pb.ScoreColumn(
                        outcome=c.outcome,
                        horizon_ms=c.horizon_ms,
                        calibrated=c.calibrated,
                        audience=c.audience,
                    )
                    for c in info.columns.get(v, ())
                ],
            )
            for v, s in sorted(info.states.items())
        ],
        dim=info.dim,
    )
    if info.index is not None:
        idx = info.index.index
        updated = idx.updated_at_ms
        resp.index.CopyFrom(
            pb.IndexInfo(
                model_version=info.index.version,
                size=idx.size,
                kind=idx.kind,
                seconds_since_update=-1.0 if updated is None else age_seconds(updated),
                lag_records=_lag(info.index.lag),
            )
        )
    return resp


def _lag(lag: Callable[[], int | None] | None) -> int:
    """Update-log records the index is behind; -1 when unknown or no follower."""
    value = lag() if lag is not None else None
    return -1 if value is None else value
