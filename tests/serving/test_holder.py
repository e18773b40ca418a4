"""VersionedFollower: the served index follows the store's active version, swapping whole."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from contract.updates import encode_update
from services.common.kafka import producer as kafka_producer
from services.config import KafkaConfig
from services.index import IndexConfig
from services.index.holder import FollowConfig, IndexHolder, VersionedFollower
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.vectors import VectorStore

pytestmark = pytest.mark.integration
DIM, DB = 4, 11


@pytest.fixture
def store(stack: EmbeddedStack) -> Iterator[VectorStore]:
    client = connect(f"{stack.addresses.redis}/{DB}")
    client.flushdb()
    try:
        yield VectorStore(client)
    finally:
        client.close()


def wait_for(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_index_switches_to_the_new_active_version(
    stack: EmbeddedStack, make_topic: Callable[..., str], store: VectorStore
) -> None:
    topic = make_topic(stack.addresses.bootstrap, 2, "emb")
    rng = np.random.default_rng(0)
    producer = kafka_producer(KafkaConfig(bootstrap=stack.addresses.bootstrap))
    try:
        for version, n in (("va", 30), ("vb", 20)):
            for i in range(n):
                v = rng.normal(size=DIM).astype(np.float32)
                producer.send(
                    topic,
                    key=f"{version}-{i}".encode(),
                    value=encode_update(f"{version}-{i}", v, version),
                )
        producer.flush(30)
    finally:
        producer.close()
    store.set_state("vb", "ready")
    store.set_active("va")
    holder = IndexHolder()
    cfg = FollowConfig(stack.addresses.bootstrap, topic, IndexConfig(dim=DIM, gpu="off"),
                       check_s=0.2, catch_up_s=30)  # fmt: skip
    follower = VersionedFollower(cfg, holder, store.active_version)
    follower.start()
    try:
        wait_for(lambda: (s := holder.current()) is not None and s.version == "va")
        first = holder.current()
        assert first is not None and first.index.size == 30 and "va-0" in first.index
        assert first.lag is not None and first.lag() == 0
        store.set_active("vb")
        wait_for(lambda: (s := holder.current()) is not None and s.version == "vb")
        second = holder.current()
        assert second is not None and second.index.size == 20 and "va-0" not in second.index
        assert first.index.size == 30  # the old index was swapped out whole, not mutated
    finally:
        follower.stop()


def test_a_failing_version_check_logs_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """The store gone: the check fails every `check_s`, the log gets one line per 10 s."""
    calls = []

    def gone() -> str | None:
        calls.append(1)
        raise ConnectionError("store unreachable")

    cfg = FollowConfig("127.0.0.1:1", "persona.embeddings", IndexConfig(), check_s=0.01)
    follower = VersionedFollower(cfg, IndexHolder(), gone)
    with caplog.at_level("ERROR", logger="services.index.holder"):
        follower.start()
        try:
            wait_for(lambda: len(calls) >= 5)
        finally:
            follower.stop()
    lines = [r for r in caplog.records if "version check failed" in r.getMessage()]
    assert len(lines) == 1
