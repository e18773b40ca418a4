"""Shared helpers of the serving tests (constants, data, the Running handle)."""

from __future__ import annotations

import time

import grpc
import numpy as np
from persona.v1 import service_pb2_grpc
from prometheus_client import CollectorRegistry

from services.serving.config import Limits, ServeConfig
from services.serving.metrics import ServingMetrics
from services.serving.server import ServingServer
from services.store.records import StoredVector
from services.store.vectors import VectorStore

DB = 9
DIM = 8
V1, V2 = "v1-serve", "v2-serve"
NOW_MS = int(time.time() * 1000)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def put_users(
    store: VectorStore, version: str, n: int, seed: int, prefix: str = "u"
) -> dict[str, np.ndarray]:
    """n users with random float32 vectors (D,) under `version`; returns uid -> vector."""
    rng = np.random.default_rng(seed)
    vecs = {f"{prefix}{i}": rng.normal(size=DIM).astype(np.float32) for i in range(n)}
    store.put_batch(
        [
            StoredVector(u, version, v, NOW_MS - 5000, 10 + i, 1)
            for i, (u, v) in enumerate(vecs.items())
        ]
    )
    return vecs


BASE = ServeConfig(
    host="127.0.0.1", port=0, dim=DIM, limits=Limits(max_batch=300, max_k=100, max_seeds=50),
    workers=8, store_workers=8, grace_s=1.0, version_cache_s=0.0,
)  # fmt: skip


class Running:
    """A started server, its channel, stub and metrics registry."""

    def __init__(self, server: ServingServer, channel: grpc.Channel, registry: CollectorRegistry,
                 metrics: ServingMetrics) -> None:  # fmt: skip
        self.server = server
        self.channel = channel
        self.stub = service_pb2_grpc.UserEmbeddingServiceStub(channel)
        self.registry = registry
        self.metrics = metrics

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0
