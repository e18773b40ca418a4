"""Fixtures of the serving tests.

Vectors live in a database of their own (db 9) on the shared single-node Valkey, so the
active-version pointer these tests flip cannot meet another suite's. Servers run in this
process on port 0; every server and channel is closed in the fixture's finally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.index import IndexConfig
from services.index.holder import IndexHolder, ServedIndex
from services.index.prior import PriorIndex
from services.serving.metrics import ServingMetrics, serving_metrics
from services.serving.server import ServingServer
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.vectors import VectorStore
from tests.serving.support import BASE, DB, DIM, V1, V2, Running, put_users


@pytest.fixture(scope="module")
def vstore(stack: EmbeddedStack) -> Iterator[VectorStore]:
    """A VectorStore on db 9 of the shared Valkey, emptied first."""
    client = connect(f"{stack.addresses.redis}/{DB}")
    client.flushdb()
    store = VectorStore(client, history=4)
    try:
        yield store
    finally:
        store.close()
        client.close()


@pytest.fixture(scope="module")
def users(vstore: VectorStore) -> dict[str, dict[str, np.ndarray]]:
    """uid -> vector per version: V1 (active) and V2 (ready), 200 users each, same ids."""
    out = {V1: put_users(vstore, V1, 200, seed=1), V2: put_users(vstore, V2, 200, seed=2)}
    vstore.set_state(V2, "ready")
    vstore.set_active(V1)
    return out


@pytest.fixture(scope="module")
def holder(users: dict[str, dict[str, np.ndarray]]) -> IndexHolder:
    """The V1 index, holding every V1 user."""
    index = PriorIndex(IndexConfig(dim=DIM, gpu="off"))
    ids = list(users[V1])
    index.upsert(ids, np.stack([users[V1][u] for u in ids]))
    return IndexHolder(ServedIndex(V1, index))


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    """`serve(store, index, channel_creds=None, ready=None, served_log=None, heads=None,
    **config_overrides)` -> a Running server (`ready`: see `ServingServer.start`; `heads`:
    its `HeadSource`, e.g. `RegistryHeads(models)`); all stopped after."""
    started: list[Running] = []

    def start(
        store: Any,
        index: Any,
        channel_creds: Any = None,
        ready: Any = None,
        served_log: Callable[[ServingMetrics], Any] | None = None,
        heads: Any = None,
        **over: Any,
    ) -> Running:
        registry = CollectorRegistry()
        metrics = serving_metrics(registry)
        log = served_log(metrics) if served_log is not None else None
        server = ServingServer(replace(BASE, **over), store, index, metrics, served_log=log,
                               heads=heads)  # fmt: skip
        server.start(ready=ready)
        target = f"localhost:{server.port}"
        channel = (
            grpc.secure_channel(target, channel_creds)
            if channel_creds is not None
            else grpc.insecure_channel(target)
        )
        r = Running(server, channel, registry, metrics)
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            r.channel.close()
            r.server.stop(grace_s=0)


@pytest.fixture
def running(
    serve: Callable[..., Running], vstore: VectorStore, holder: IndexHolder,
    users: dict[str, dict[str, np.ndarray]],
) -> Running:  # fmt: skip
    return serve(vstore, holder)
