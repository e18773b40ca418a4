"""AdminService.ForgetUsers on a running server, against the embedded stack: the store
forgets the user, a replica's index drops it (tombstones in the update log), the user's old
events stay refused, and the call is behind the bearer token and checks its ids."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace

import grpc
import numpy as np
import pytest
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc as pb_grpc
from prometheus_client import CollectorRegistry

from contract.events import Event
from services.common.kafka import producer
from services.config import KafkaConfig, WindowConfig
from services.index import IndexConfig, LookalikeIndex
from services.index.follower import IndexFollower
from services.index.holder import IndexHolder
from services.refresh.publish import Publisher
from services.serving.admin import AdminServicer
from services.serving.metrics import serving_metrics
from services.serving.server import ServingServer
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.forget import StoreForgetter
from services.store.records import StoredVector
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.serving.support import BASE, DIM
from tests.store_support import UserUpdate, apply_events

pytestmark = pytest.mark.integration
AT = 1_765_000_000_000  # the server's clock for the request
SERVING_TOKEN = [("authorization", "Bearer s3cret")]
TOKEN = [("authorization", "Bearer adm1n")]  # the AdminService's own


def test_forget_users_rpc(stack: EmbeddedStack, make_topic: Callable[..., str]) -> None:
    a = stack.addresses
    topic = make_topic(a.bootstrap, 2, "adm", {"cleanup.policy": "compact"})
    pre = f"ad{uuid.uuid4().hex[:10]}"
    gone, stays, ver = f"{pre}-gone", f"{pre}-stays", f"vad-{pre}"
    users = [gone, stays]
    client = connect(a.redis)
    windows, vectors, forgetter = WindowStore(client, WindowConfig()), VectorStore(client), None
    pub = Publisher(producer(KafkaConfig(bootstrap=a.bootstrap)), topic)
    follower = IndexFollower(
        a.bootstrap, topic, LookalikeIndex(IndexConfig(dim=DIM, gpu="off")), ver
    )
    server: ServingServer | None = None
    channel: grpc.Channel | None = None
    try:
        apply_events(
            windows, [UserUpdate(u, 0, [(0, Event(u, "e0", AT - 5, "view"))]) for u in users]
        )
        vectors.set_state(ver, "ready")
        rng = np.random.default_rng(3)
        vs = [
            StoredVector(u, ver, rng.normal(size=DIM).astype(np.float32), AT, 1, 1) for u in users
        ]
        vectors.put_batch(vs)
        pub.publish(vs)
        forgetter = StoreForgetter(client)
        admin = AdminServicer(
            forgetter,
            lambda: Publisher(producer(KafkaConfig(bootstrap=a.bootstrap)), topic),
            max_users=10,
            clock_ms=lambda: AT,
        )
        with pytest.raises(ValueError, match="its own token"):
            ServingServer(
                replace(BASE, auth_token="s3cret"), vectors, IndexHolder(),
                serving_metrics(CollectorRegistry()), admin=admin,
            )  # fmt: skip
        server = ServingServer(
            replace(BASE, auth_token="s3cret", admin_token="adm1n"), vectors, IndexHolder(),
            serving_metrics(CollectorRegistry()), admin=admin,
        )  # fmt: skip
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = pb_grpc.AdminServiceStub(channel)

        with pytest.raises(grpc.RpcError) as no_token:
            stub.ForgetUsers(pb.ForgetUsersRequest(user_ids=[gone]), timeout=10)
        with pytest.raises(grpc.RpcError) as rankers_token:  # serving's token is not enough
            stub.ForgetUsers(pb.ForgetUsersRequest(user_ids=[gone]), metadata=SERVING_TOKEN)
        assert rankers_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        serving = pb_grpc.UserEmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as admins_token:  # and the admin's is not a ranker's
            serving.GetModelInfo(pb.GetModelInfoRequest(), metadata=TOKEN, timeout=10)
        assert admins_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        serving.GetModelInfo(pb.GetModelInfoRequest(), metadata=SERVING_TOKEN, timeout=10)
        with pytest.raises(grpc.RpcError) as empty:
            stub.ForgetUsers(pb.ForgetUsersRequest(user_ids=[gone, ""]), metadata=TOKEN)
        assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as too_long:  # forgettable in the store, but its
            long_id = "é" * 129  # tombstone's key would be refused by the log forever
            stub.ForgetUsers(pb.ForgetUsersRequest(user_ids=[long_id]), metadata=TOKEN)
        assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "258 bytes; at most 256" in (too_long.value.details() or "")
        assert follower.catch_up(30) and follower.index.size == 2  # nothing forgotten yet

        got = stub.ForgetUsers(pb.ForgetUsersRequest(user_ids=[gone]), metadata=TOKEN, timeout=30)

        assert (got.forgotten, got.windows, got.vector_lists) == (1, 1, 1)
        assert got.forgotten_at_ms == AT and got.tombstones >= 1
        assert follower.catch_up(30)
        assert [u for u in users if follower.index.vector_of(u) is not None] == [stays]
        assert [len(w.events) for w in windows.read(users)] == [0, 1]
        assert [len(x) for x in vectors.get_batch(users, ver)] == [0, 1]
        late = apply_events(windows, [UserUpdate(gone, 0, [(1, Event(gone, "e1", AT, "view"))])])
        assert (late.applied, late.forgotten) == (0, 1)  # stamped at the request: refused
    finally:
        if channel is not None:
            channel.close()
        if server is not None:
            server.stop(grace_s=0)
        follower.stop()
        pub.close()
        if forgetter is not None:
            forgetter.close()
        windows.close()
        vectors.close()
        client.close()
