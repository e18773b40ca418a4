"""PersonaClient: the three persona.v1 calls, with deadlines, retries and auth from one
ClientConfig, answers as numpy arrays.

Example::

    with PersonaClient(ClientConfig("persona-serve:50051", timeout_s=0.05)) as client:
        client.wait_ready(30)
        emb = client.get_embeddings(["u1", "u2"])      # emb.vectors: (2, D) float32
        near = client.find_lookalikes(user_id="u1", k=10)

A failed call raises `grpc.RpcError`; `.code()` says why (docs/api.md lists the codes of
each call and when they happen).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc as pb_grpc

from persona_client.config import HEALTH_SERVICE, ClientConfig, channel_options
from persona_client.results import Embeddings, Lookalikes, embeddings_from_proto

_ENCODINGS = {"float32": pb.VECTOR_ENCODING_FLOAT32, "float16": pb.VECTOR_ENCODING_FLOAT16}
_SEED_MODES = {"mean": pb.SEED_MODE_MEAN, "union": pb.SEED_MODE_UNION}
_PARTS = {
    "default": pb.VECTOR_PART_UNSPECIFIED,
    "nearline": pb.VECTOR_PART_NEARLINE,
    "short_term": pb.VECTOR_PART_SHORT_TERM,
    "combined": pb.VECTOR_PART_COMBINED,
}


def open_channel(cfg: ClientConfig) -> grpc.Channel:
    """A channel to `cfg.target` carrying the service config (retries, deadline, balancing)."""
    options = channel_options(cfg)
    if cfg.tls is None:
        return grpc.insecure_channel(cfg.target, options=options)
    creds = grpc.ssl_channel_credentials(
        cfg.tls.root_certificates, cfg.tls.private_key, cfg.tls.cert_chain
    )
    return grpc.secure_channel(cfg.target, creds, options=options)


class PersonaClient:
    """A channel and a stub; thread-safe (share one per process). Close it, or use `with`."""

    def __init__(self, config: ClientConfig | str) -> None:
        self.config = ClientConfig(config) if isinstance(config, str) else config
        self.channel = open_channel(self.config)
        self.stub = pb_grpc.UserEmbeddingServiceStub(self.channel)
        token = self.config.token
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _timeout(self, timeout_s: float | None) -> float:
        return self.config.timeout_s if timeout_s is None else timeout_s

    def get_embeddings(
        self,
        user_ids: Sequence[str],
        *,
        history_depth: int = 0,
        model_version: str = "",
        encoding: Literal["float32", "float16"] = "float32",
        fallback_prior: bool = False,
        include_scores: bool = False,
        part: Literal["default", "nearline", "short_term", "combined"] = "default",
        timeout_s: float | None = None,
    ) -> Embeddings:
        """Vectors of `user_ids` (request order; duplicates each get a row) under one model
        version: `model_version`, or the active one when empty.

        Args:
            history_depth: older vectors per user to return as well, newest first.
            encoding: "float16" halves the response; vectors come back as float16.
            fallback_prior: a user without a vector gets the population prior (status
                FALLBACK_PRIOR) instead of a row of zeros (NOT_FOUND).
            include_scores: also the users' calibrated outcome probabilities, read with the
                vectors: `Embeddings.scores` (N, S), NaN where a row has none; column j is
                `score_columns(client.model_info(), emb.model_version)[j]`.
            part: which part of the vector: "nearline" (as the refresher stored it),
                "short_term" (the version's short-term head over the user's events since
                then), "combined" (their sum); "default": combined when the version has a
                head, else nearline. `Embeddings.part` says which came back.
            timeout_s: this call's deadline (default `config.timeout_s`).
        """
        ids = tuple(user_ids)
        req = pb.GetEmbeddingsRequest(
            user_ids=ids,
            model_version=model_version,
            history_depth=history_depth,
            encoding=_ENCODINGS[encoding],
            fallback=pb.FALLBACK_POPULATION_PRIOR if fallback_prior else pb.FALLBACK_NONE,
            include_scores=include_scores,
            part=_PARTS[part],
        )
        resp = self.stub.GetEmbeddings(
            req, timeout=self._timeout(timeout_s), metadata=self._metadata
        )
        return embeddings_from_proto(resp, ids)

    def find_lookalikes(
        self,
        *,
        user_id: str | None = None,
        vector: Sequence[float] | None = None,
        seeds: Sequence[str] | None = None,
        k: int = 10,
        exclude_seeds: bool = False,
        min_score: float | None = None,
        seed_mode: Literal["mean", "union"] = "mean",
        model_version: str = "",
        timeout_s: float | None = None,
    ) -> Lookalikes:
        """The `k` nearest users to one of: a user, a vector (dim floats), a seed audience.

        Args:
            exclude_seeds: leave the query user / the seeds out of the answer.
            min_score: drop neighbours with cosine below this.
            seed_mode: "mean" queries the seeds' mean direction once; "union" queries each
                seed and keeps each neighbour's best score.
        """
        if sum(x is not None for x in (user_id, vector, seeds)) != 1:
            raise ValueError("give exactly one of user_id, vector, seeds")
        req = pb.FindLookalikesRequest(
            k=k, exclude_seeds=exclude_seeds, seed_mode=_SEED_MODES[seed_mode],
            model_version=model_version,
        )  # fmt: skip
        if user_id is not None:
            req.user_id = user_id
        elif vector is not None:
            req.vector.values.extend([float(x) for x in vector])
        else:
            req.seeds.user_ids.extend(seeds or ())
        if min_score is not None:
            req.min_score = min_score
        resp = self.stub.FindLookalikes(
            req, timeout=self._timeout(timeout_s), metadata=self._metadata
        )
        return Lookalikes.from_proto(resp)

    def audience(
        self,
        outcome: str,
        horizon_ms: int,
        *,
        min_score: float | None = None,
        top_n: int | None = None,
        max_score: float | None = None,
        page_size: int = 0,
        model_version: str = "",
        timeout_s: float | None = None,
    ) -> Iterator[tuple[list[str], list[float]]]:
        """The audience of one score column, page by page: (user ids, their scores) per page,
        until the server says it was the last. Give `top_n`, or `min_score` (P >= it) and/or
        `max_score` (P <= it: e.g. churn risk on "(any)").
        All pages read the version the first page resolved (the page token pins it).

        Args:
            page_size: users per page (0: the server's default, 10,000).
            timeout_s: each page's deadline (default `config.timeout_s`).
        """
        if (top_n is None) == (min_score is None and max_score is None):
            raise ValueError("give top_n, or min_score and/or max_score")
        token = ""
        while True:
            req = pb.GetAudienceRequest(
                outcome=outcome, horizon_ms=horizon_ms, page_size=page_size,
                page_token=token, model_version=model_version,
            )  # fmt: skip
            if top_n is not None:
                req.top_n = int(top_n)
            if min_score is not None:
                req.min_score = min_score
            if max_score is not None:
                req.max_score = max_score
            resp = self.stub.GetAudience(
                req, timeout=self._timeout(timeout_s), metadata=self._metadata
            )
            yield list(resp.user_ids), list(resp.scores)
            if not (token := resp.next_page_token):
                return

    def model_info(self, *, timeout_s: float | None = None) -> pb.GetModelInfoResponse:
        """The active version, the known versions and their states, dim, the index."""
        return self.stub.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=self._timeout(timeout_s), metadata=self._metadata
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the service's health (readiness: the replica's lookalike index has caught
        up with the update log) says SERVING. Health checks need no token.

        Raises:
            TimeoutError: not SERVING within `timeout_s`.
        """
        health = health_pb2_grpc.HealthStub(self.channel)
        req = health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if health.Check(req, timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.config.target} not SERVING after {timeout_s} s")
            time.sleep(0.2)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PersonaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
