"""`persona serve` run in this process: on shutdown the store's read connections and
threads go with it, not only the server (the router keeps connections of its own beside
the client's pool)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc

from services.children import free_ports
from services.cli import parse
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.vectors import VectorStore
from tests.serving.support import DB, DIM, V1

pytestmark = pytest.mark.integration


def _connections(client: object) -> int:
    return len(client.client_list())  # type: ignore[attr-defined]


def test_serve_shutdown_closes_the_store_reads(
    stack: EmbeddedStack, users: dict[str, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()
    monkeypatch.setattr("services.cli.runtime.stop_on_signals", lambda: stop)
    monkeypatch.setattr("services.cli.runtime.service_logging", lambda *_: None)
    closed: list[VectorStore] = []
    close = VectorStore.close
    monkeypatch.setattr(VectorStore, "close", lambda self: (closed.append(self), close(self))[1])
    (port,) = free_ports(1)
    url = f"{stack.addresses.redis}/{DB}"
    argv = ["serve", "--no-index", "--dim", str(DIM), "--host", "127.0.0.1",
            "--port", str(port), "--redis", url, "--grace-s", "1"]  # fmt: skip
    args = parse(argv)
    probe = connect(url)
    before = _connections(probe)
    server = threading.Thread(target=args.func, args=(args,), name="persona-serve-test")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            stub = service_pb2_grpc.UserEmbeddingServiceStub(ch)
            ids = list(users[V1])[:20]
            resp = stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=ids), timeout=10)
            assert len(resp.statuses) == len(ids)
        assert _connections(probe) > before  # the serving read holds connections of its own
    finally:
        stop.set()
        server.join(30)
    try:
        assert not server.is_alive()
        assert len(closed) == 1
        deadline = time.monotonic() + 5
        while _connections(probe) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _connections(probe) == before  # every connection persona serve made is gone
    finally:
        probe.close()
