"""The store contract suite runs every test against three set-ups of the same Protocols
(services/store/protocols.py): the in-memory stores, a single Valkey node, and the 3-node
Valkey cluster. Tests use unique user ids and version ids and measure counts as
differences, so they hold on the shared stacks (the cluster has only db 0)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services.config import WindowConfig
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.memory import MemoryWindows
from services.store.memory_vectors import MemoryVectors
from services.store.protocols import Vectors, Windows
from services.store.vectors import VectorStore
from services.store.windows import WindowStore

CFG = WindowConfig(max_events=6, horizon_ms=2_000)
HISTORY = 3
NODE_DB = 12  # the single node's db of this suite (flushed first)


@dataclass
class Stores:
    backend: str  # "memory" | "node" | "cluster"
    windows: Windows
    vectors: Vectors


@pytest.fixture(params=["memory", "node", "cluster"])
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    if request.param == "memory":
        mw = MemoryWindows(CFG)
        yield Stores("memory", mw, MemoryVectors(mw, history=HISTORY))
        return
    st: EmbeddedStack = request.getfixturevalue(
        "stack" if request.param == "node" else "cluster_stack"
    )
    url = st.addresses.redis + (f"/{NODE_DB}" if request.param == "node" else "")
    client = connect(url)
    if request.param == "node":
        client.flushdb()
    windows, vectors = WindowStore(client, CFG), VectorStore(client, history=HISTORY)
    try:
        yield Stores(request.param, windows, vectors)
    finally:
        windows.close()
        vectors.close()
        client.close()
