"""What a ranker and an audience team call: a small gRPC client over persona.v1."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto import service_pb2, service_pb2_grpc


@dataclass(frozen=True)
class Embeddings:
    version: str
    statuses: list[str]
    meta: list[service_pb2.VectorMeta]
    vectors: np.ndarray  # (n, dim)
    history: list[np.ndarray]  # per user (h, dim), newest first


class Client:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = service_pb2_grpc.UserEmbeddingServiceStub(self.channel)

    def wait_serving(self, timeout_s: float = 90) -> None:
        """Until the Persona service's health (readiness: the lookalike index caught up with
        the update log) says SERVING; the server as a whole ("") says so from its start."""
        health = health_pb2_grpc.HealthStub(self.channel)
        ready = health_pb2.HealthCheckRequest(service="persona.v1.UserEmbeddingService")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                resp = health.Check(ready, timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("persona serve did not become SERVING")
            time.sleep(0.3)

    def embeddings(self, user_ids: list[str], history: int = 0) -> Embeddings:
        resp = self.stub.GetEmbeddings(
            service_pb2.GetEmbeddingsRequest(user_ids=user_ids, history_depth=history), timeout=10
        )
        n, dim = len(resp.embeddings), resp.dim
        vectors = np.frombuffer(resp.vectors, "<f4").reshape(n, dim)
        rows = np.frombuffer(resp.history_vectors, "<f4").reshape(-1, dim)
        hist, i = [], 0
        for e in resp.embeddings:
            hist.append(rows[i : i + len(e.history)])
            i += len(e.history)
        names = [service_pb2.EmbeddingStatus.Name(e.status) for e in resp.embeddings]
        return Embeddings(
            resp.model_version, names, [e.meta for e in resp.embeddings], vectors, hist
        )

    def lookalikes_of_user(self, user_id: str, k: int) -> list[tuple[str, float]]:
        resp = self.stub.FindLookalikes(
            service_pb2.FindLookalikesRequest(user_id=user_id, k=k), timeout=10
        )
        return [(n.user_id, n.score) for n in resp.neighbors]

    def lookalikes_of_seeds(self, seeds: list[str], k: int) -> list[tuple[str, float]]:
        req = service_pb2.FindLookalikesRequest(
            seeds=service_pb2.UserList(user_ids=seeds), k=k, exclude_seeds=True
        )
        return [(n.user_id, n.score) for n in self.stub.FindLookalikes(req, timeout=10).neighbors]

    def model_info(self) -> service_pb2.GetModelInfoResponse:
        return self.stub.GetModelInfo(service_pb2.GetModelInfoRequest(), timeout=10)

    def close(self) -> None:
        self.channel.close()
