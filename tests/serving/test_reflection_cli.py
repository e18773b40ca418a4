"""Done-when: a generic client using server reflection alone (no proto files, no generated
code) calls every method of a running `persona serve` child process.

The server runs with a bearer token taken from PERSONA_AUTH_TOKEN; the generic client adds
the header to every call with a channel interceptor, as grpcurl does with -H.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from contract.updates import encode_update
from services.common.kafka import producer as kafka_producer
from services.config import KafkaConfig
from services.stack import EmbeddedStack, free_ports
from services.store.client import connect
from services.store.records import StoredVector
from services.store.vectors import VectorStore

pytestmark = pytest.mark.integration
PERSONA = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]
SERVICE = "persona.v1.UserEmbeddingService"
TOKEN = "reflect-token-123"
VERSION, DIM, DB = "v1-cli", 8, 10


class _Auth(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every call."""

    def _with_token(self, details: Any) -> Any:
        md = [*(details.metadata or ()), ("authorization", f"Bearer {TOKEN}")]
        return details._replace(metadata=md)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


class GenericClient:
    """Calls any unary method by name, learning the types from reflection."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.db = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def call(self, service: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        m = self.pool.FindServiceByName(service).FindMethodByName(method)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        rpc = self.channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        resp = rpc(json_format.ParseDict(body, req_cls()), timeout=10)
        return json_format.MessageToDict(resp, preserving_proto_field_name=True)


def _seed(stack: EmbeddedStack, topic: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    vecs = {f"r{i}": rng.normal(size=DIM).astype(np.float32) for i in range(50)}
    client = connect(f"{stack.addresses.redis}/{DB}")
    try:
        client.flushdb()
        store = VectorStore(client)
        now = int(time.time() * 1000)
        store.put_batch([StoredVector(u, VERSION, v, now, 3, 1) for u, v in vecs.items()])
        store.set_active(VERSION)
    finally:
        client.close()
    producer = kafka_producer(KafkaConfig(bootstrap=stack.addresses.bootstrap))
    try:
        for u, v in vecs.items():
            producer.send(topic, key=u.encode(), value=encode_update(u, v, VERSION))
        producer.flush(30)
    finally:
        producer.close()
    return vecs


def _wait(check: Callable[[], bool], proc: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if check():
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise AssertionError("persona serve did not get ready in time")


def test_generic_reflection_client_calls_every_method(
    stack: EmbeddedStack, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(stack.addresses.bootstrap, 2, "emb")
    vecs = _seed(stack, topic)
    port, mport = free_ports(2)
    cmd = [
        *PERSONA, "serve", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", str(mport), "--redis", f"{stack.addresses.redis}/{DB}",
        "--bootstrap", stack.addresses.bootstrap, "--embeddings-topic", topic,
        "--dim", str(DIM), "--grace-s", "2",
    ]  # fmt: skip
    env = {**os.environ, "PERSONA_AUTH_TOKEN": TOKEN}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"), _Auth())
    try:
        client = GenericClient(channel)
        health = "grpc.health.v1.Health"
        _wait(lambda: client.call(health, "Check", {})["status"] == "SERVING", proc, 60)
        assert {SERVICE, health} <= set(client.db.get_services())
        info: dict[str, Any] = {}

        def indexed() -> bool:
            info.update(client.call(SERVICE, "GetModelInfo", {}))
            return int(info.get("index", {}).get("size", 0)) == len(vecs)

        _wait(indexed, proc, 60)
        assert info["active_version"] == VERSION and info["dim"] == DIM

        got = client.call(SERVICE, "GetEmbeddings", {"user_ids": ["r1", "ghost"]})
        assert got["statuses"] == ["EMBEDDING_STATUS_FOUND", "EMBEDDING_STATUS_NOT_FOUND"]
        assert got["meta"]["n_events"] == [3, 0] and got["encoding"] == "VECTOR_ENCODING_FLOAT32"
        rows = np.frombuffer(base64.b64decode(got["vectors"]), "<f4").reshape(2, DIM)
        np.testing.assert_array_equal(rows[0], vecs["r1"])

        near = client.call(SERVICE, "FindLookalikes", {"user_id": "r1", "k": 5})
        assert near["neighbors"][0]["user_id"] == "r1" and len(near["neighbors"]) == 5
        seeds = {"seeds": {"user_ids": ["r1", "r2"]}, "k": 3, "exclude_seeds": True}
        near = client.call(SERVICE, "FindLookalikes", seeds)
        assert len(near["neighbors"]) == 3
        assert not {"r1", "r2"} & {n["user_id"] for n in near["neighbors"]}

        # without the token: refused
        with pytest.raises(grpc.RpcError) as ei, grpc.insecure_channel(f"127.0.0.1:{port}") as bare:
            GenericClient(bare).call(SERVICE, "GetModelInfo", {})
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
