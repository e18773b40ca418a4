"""The gRPC servicer: requests in, plain-function calls, responses out (built by
`responses.py`). No logic of its own beyond translation; errors become
`context.abort(code, details)`."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc as pb_grpc

from services.common.log_limit import LogLimit
from services.serving.audiences import AudienceQuery, get_audience
from services.serving.config import ServeConfig
from services.serving.embeddings import STATUSES, EmbeddingsQuery, get_embeddings
from services.serving.errors import ServingError
from services.serving.lookalikes import LookalikeQuery, ScoreRange, find_lookalikes, model_info
from services.serving.metrics import ServingMetrics
from services.serving.ports import IndexSource, VectorReader
from services.serving.responses import (
    DTYPES,
    embeddings_response,
    lookalikes_response,
    model_info_response,
)
from services.serving.shortterm import PARTS, HeadSource
from services.serving.store_calls import Budget, StoreCaller
from services.serving.versions import VersionResolver

if TYPE_CHECKING:
    from services.serving.served_log import ServedLog

log = logging.getLogger(__name__)
T = TypeVar("T")


class UserEmbeddingServicer(pb_grpc.UserEmbeddingServiceServicer):
    def __init__(
        self,
        config: ServeConfig,
        store: VectorReader,
        index: IndexSource,
        metrics: ServingMetrics,
        served_log: ServedLog | None = None,
        heads: HeadSource | None = None,
    ) -> None:
        """`served_log`: GetEmbeddings answers are offered to it (None: not logged).
        `heads`: the versions' short-term heads (None: every version served nearline)."""
        self._cfg = config
        self._heads = heads
        self._served_log = served_log
        self._store = store
        self._index = index
        self._m = metrics
        self._caller = StoreCaller(
            config.store_workers, lambda kind: metrics.store_errors.labels(kind).inc()
        )
        self._versions = VersionResolver(store, self._caller, config.version_cache_s)
        self._status_counts = [metrics.embeddings.labels(s) for s in STATUSES]
        self._short_term = [metrics.short_term.labels(s) for s in ("state", "window", "ingest")]
        self._get_batch_size = metrics.batch_size.labels("GetEmbeddings")
        self._log_limit = LogLimit(10.0)  # a traceback per error type at most every 10 s

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
        except Exception as exc:
            if (held := self._log_limit(type(exc).__name__)) is not None:
                log.exception("unexpected error serving a call%s", LogLimit.more(held))
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: context.abort raises")

    def GetEmbeddings(
        self, request: pb.GetEmbeddingsRequest, context: grpc.ServicerContext
    ) -> pb.GetEmbeddingsResponse:
        if request.encoding not in DTYPES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown encoding {request.encoding}")
        _known_enum(context, "fallback", request.fallback, pb.Fallback)
        _known_enum(context, "part", request.part, pb.VectorPart)
        self._get_batch_size.observe(len(request.user_ids))
        q = EmbeddingsQuery(
            user_ids=request.user_ids,
            model_version=request.model_version,
            history_depth=request.history_depth,
            fallback=request.fallback == pb.FALLBACK_POPULATION_PRIOR,
            include_scores=request.include_scores,
            part=PARTS[request.part],
        )
        r = self._call(functools.partial(get_embeddings, heads=self._heads), q, context)
        counts = np.bincount(r.status, minlength=len(STATUSES)).tolist()
        for counter, count in zip(self._status_counts, counts, strict=True):
            if count:
                counter.inc(count)
        for counter, count in zip(self._short_term, r.short_term_sources, strict=True):
            if count:
                counter.inc(count)
        if self._served_log is not None:
            self._served_log.offer(request.user_ids, r)
        return embeddings_response(r, request.encoding, self._cfg.dim, time.time())

    def FindLookalikes(
        self, request: pb.FindLookalikesRequest, context: grpc.ServicerContext
    ) -> pb.FindLookalikesResponse:
        _known_enum(context, "seed_mode", request.seed_mode, pb.SeedMode)
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
            score_range=_score_range(request),
        )
        r = self._call(find_lookalikes, q, context)
        self._m.neighbors.observe(len(r.neighbors))
        return lookalikes_response(r)

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
        return model_info_response(info)

    def GetAudience(
        self, request: pb.GetAudienceRequest, context: grpc.ServicerContext
    ) -> pb.GetAudienceResponse:
        which = request.WhichOneof("select")
        q = AudienceQuery(
            outcome=request.outcome,
            horizon_ms=request.horizon_ms,
            min_score=request.min_score if which == "min_score" else None,
            top_n=request.top_n if which == "top_n" else None,
            max_score=request.max_score if request.HasField("max_score") else None,
            page_size=request.page_size,
            page_token=request.page_token,
            model_version=request.model_version,
        )
        budget = self._budget(context)
        r = self._run(
            context,
            lambda: get_audience(
                q, store=self._store, versions=self._versions, caller=self._caller, budget=budget
            ),
        )
        return pb.GetAudienceResponse(
            model_version=r.version,
            user_ids=r.user_ids,
            scores=r.scores,
            next_page_token=r.next_token,
            threshold=r.threshold,
        )


def _score_range(request: pb.FindLookalikesRequest) -> ScoreRange | None:
    if not request.HasField("score_range"):
        return None
    r = request.score_range
    return ScoreRange(
        outcome=r.outcome,
        horizon_ms=r.horizon_ms,
        lo=r.min if r.HasField("min") else None,
        hi=r.max if r.HasField("max") else None,
    )


def _known_enum(context: grpc.ServicerContext, field: str, value: int, enum: Any) -> None:
    """A value the enum does not define (a newer client, a bug) is INVALID_ARGUMENT, not
    silently the default (proto3 keeps unknown values as plain ints)."""
    if value not in enum.values():
        names = ", ".join(enum.keys())
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown {field} {value} (one of {names})")
