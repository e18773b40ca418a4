"""The gRPC servicer: protos in, plain-function calls, protos out. No logic of its own
beyond translation; errors become `context.abort(code, details)`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from proto import service_pb2 as pb
from proto import service_pb2_grpc as pb_grpc
from services.serving import wire
from services.serving.config import ServeConfig
from services.serving.embeddings import (
    STATUSES,
    EmbeddingsQuery,
    age_seconds,
    get_embeddings,
)
from services.serving.errors import ServingError
from services.serving.lookalikes import LookalikeQuery, find_lookalikes, model_info
from services.serving.metrics import ServingMetrics
from services.serving.ports import IndexSource, VectorReader
from services.serving.store_calls import Budget, StoreCaller
from services.serving.versions import VersionResolver

log = logging.getLogger(__name__)
T = TypeVar("T")

PB_STATUS = {  # embeddings.STATUSES -> the proto's Status
    "found": pb.STATUS_FOUND,
    "not_found": pb.STATUS_NOT_FOUND,
    "fallback": pb.STATUS_FALLBACK_PRIOR,
}
_STATUS_CODES = np.array([PB_STATUS[s] for s in STATUSES], np.uint8)  # EmbeddingsResult.status
_DTYPE = {pb.ENCODING_FLOAT32: "<f4", pb.ENCODING_FLOAT16: "<f2"}


class UserEmbeddingServicer(pb_grpc.UserEmbeddingServiceServicer):
    def __init__(
        self,
        config: ServeConfig,
        store: VectorReader,
        index: IndexSource,
        metrics: ServingMetrics,
    ) -> None:
        self._cfg = config
        self._store = store
        self._index = index
        self._m = metrics
        self._caller = StoreCaller(
            config.store_workers, lambda kind: metrics.store_errors.labels(kind).inc()
        )
        self._versions = VersionResolver(store, self._caller, config.version_cache_s)
        self._status_counts = [metrics.embeddings.labels(s) for s in STATUSES]
        self._get_batch_size = metrics.batch_size.labels("GetEmbeddings")

    def close(self) -> None:
        self._caller.close()

    def _budget(self, context: grpc.ServicerContext) -> Budget:
        left = context.time_remaining()
        return Budget.make(left, self._cfg.store_timeout_s, self._cfg.deadline_margin_s)

    def _call(self, fn: Callable[..., T], query: Any, context: grpc.ServicerContext) -> T:
        """`fn(query, **dependencies)` within the call's budget, errors mapped to status codes."""
        budget = self._budget(context)
        return self._run(
            context,
            lambda: fn(
                query,
                store=self._store,
                versions=self._versions,
                index=self._index,
                caller=self._caller,
                limits=self._cfg.limits,
                dim=self._cfg.dim,
                budget=budget,
            ),
        )

    def _run(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ServingError as exc:
            context.abort(exc.code, exc.message)
        except Exception:
            log.exception("unexpected error serving a call")
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: context.abort raises")

    def GetEmbeddings(
        self, request: pb.GetEmbeddingsRequest, context: grpc.ServicerContext
    ) -> pb.GetEmbeddingsResponse:
        dtype = _DTYPE.get(request.encoding)
        if dtype is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown encoding {request.encoding}")
        self._get_batch_size.observe(len(request.user_ids))
        q = EmbeddingsQuery(
            user_ids=request.user_ids,
            model_version=request.model_version,
            history_depth=request.history_depth,
            fallback=request.fallback == pb.FALLBACK_POPULATION_PRIOR,
        )
        r = self._call(get_embeddings, q, context)
        counts = np.bincount(r.status, minlength=len(STATUSES)).tolist()
        for counter, count in zip(self._status_counts, counts, strict=True):
            if count:
                counter.inc(count)
        st = r.stored
        codes = _STATUS_CODES[r.status]
        prior_ms = r.prior.computed_at_ms if r.prior is not None else None
        resp = wire.response(request.user_ids, codes, st.count, st.computed_at_ms, st.n_events,
                             st.window_version, time.time(), prior_ms)  # fmt: skip
        hist = r.history_rows()
        resp.model_version = r.version
        resp.dim = self._cfg.dim
        resp.encoding = request.encoding
        resp.vectors = r.rows.astype(dtype, copy=False).tobytes()
        if len(hist):
            resp.history_vectors = hist.astype(dtype, copy=False).tobytes()
        return resp

    def FindLookalikes(
        self, request: pb.FindLookalikesRequest, context: grpc.ServicerContext
    ) -> pb.FindLookalikesResponse:
        which = request.WhichOneof("query")
        seeds = list(request.seeds.user_ids) if which == "seeds" else None
        if seeds is not None:
            self._m.batch_size.labels("FindLookalikes").observe(len(seeds))
        q = LookalikeQuery(
            k=request.k,
            user_id=request.user_id if which == "user_id" else None,
            vector=list(request.vector.values) if which == "vector" else None,
            seeds=seeds,
            exclude_seeds=request.exclude_seeds,
            min_score=request.min_score if request.HasField("min_score") else None,
            model_version=request.model_version,
            seed_mode="union" if request.seed_mode == pb.SEED_MODE_UNION else "mean",
        )
        r = self._call(find_lookalikes, q, context)
        self._m.neighbors.observe(len(r.neighbors))
        return pb.FindLookalikesResponse(
            model_version=r.version,
            neighbors=[pb.Neighbor(user_id=u, score=s) for u, s in r.neighbors],
            seeds_used=r.seeds_used,
            seeds_missing=r.seeds_missing,
        )

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        budget = self._budget(context)
        info = self._run(
            context,
            lambda: model_info(
                versions=self._versions, index=self._index, dim=self._cfg.dim, budget=budget
            ),
        )
        resp = pb.GetModelInfoResponse(
            active_version=info.active or "",
            versions=[pb.ModelVersion(version=v, state=s) for v, s in sorted(info.states.items())],
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
    value = lag() if lag is not None else None
    return -1 if value is None else value
