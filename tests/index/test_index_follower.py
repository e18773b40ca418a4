"""IndexFollower against the embedded Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from contract.updates import encode_update
from services.common.kafka import producer as kafka_producer
from services.config import KafkaConfig
from services.index import IndexConfig, LookalikeIndex
from services.index.follower import FollowerConfig, IndexFollower
from services.index.metrics import index_metrics
from services.index.synthetic import normalise
from services.stack import EmbeddedStack

pytestmark = pytest.mark.integration
DIM = 8
CFG = IndexConfig(dim=DIM, exact_below=40, gpu="off")  # crosses to IVF during the test


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes | None]]) -> None:
    producer = kafka_producer(KafkaConfig(bootstrap=bootstrap))
    try:
        for user, value in records:
            producer.send(topic, key=user.encode(), value=value)
        producer.flush()
    finally:
        producer.close()


def contents(idx: LookalikeIndex, users: list[str]) -> dict[str, np.ndarray]:
    return {u: v for u in users if (v := idx.vector_of(u)) is not None}


def wait_until(cond: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not cond():
        time.sleep(0.05)
    return cond()


def test_follower_applies_log_and_new_replica_rebuilds_from_start(
    stack: EmbeddedStack, make_topic: Callable[..., str]
) -> None:
    bootstrap = stack.addresses.bootstrap
    topic = make_topic(bootstrap, 3, "embeddings", {"cleanup.policy": "compact"})
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(60)]
    vecs = normalise(rng.standard_normal((60, DIM)))
    expected = dict(zip(users, vecs, strict=True))
    records: list[tuple[str, bytes | None]] = [
        (u, encode_update(u, v, "v1")) for u, v in expected.items()
    ]
    new3 = normalise(rng.standard_normal((1, DIM)))[0]
    records += [
        ("u3", encode_update("u3", new3, "v1")),  # overwrite
        ("u7", None),  # tombstone
        ("u8", encode_update("u8", new3, "v2")),  # another model version: ignored
        ("u9", encode_update("u9", np.full(DIM, np.nan, np.float32), "v1")),  # invalid
    ]
    expected["u3"] = new3
    del expected["u7"]
    produce(bootstrap, topic, records)

    registry = CollectorRegistry()
    metrics = index_metrics(registry)
    first = LookalikeIndex(CFG)
    cfg = FollowerConfig(rebuild_interval_s=0.3, maintenance_check_s=0.05, poll_timeout_ms=50)
    follower = IndexFollower(bootstrap, topic, first, "v1", cfg, metrics)
    follower.start()
    try:
        assert follower.catch_up(timeout_s=30)
        assert follower.lag() == 0 and follower.caught_up()
        assert_matches(first, expected, users)
        # The index crossed exact_below: the maintainer rebuilds it as IVF.
        assert wait_until(lambda: first.kind == "ivf"), first.kind
        # Live updates while running: another overwrite, a tombstone, a re-insert.
        new5 = normalise(rng.standard_normal((1, DIM)))[0]
        produce(
            bootstrap,
            topic,
            [
                ("u5", encode_update("u5", new5, "v1")),
                ("u0", b""),
                ("u7", encode_update("u7", new5, "v1")),
            ],
        )
        expected.update(u5=new5, u7=new5)
        del expected["u0"]
        assert follower.catch_up(timeout_s=30)
        assert_matches(first, expected, users)
        assert wait_until(
            lambda: (registry.get_sample_value("persona_index_rebuild_seconds_count") or 0) >= 2
        )
    finally:
        follower.stop()
    assert not follower.running and follower._consumer is None and follower.failure is None  # noqa: SLF001
    get = registry.get_sample_value
    assert get("persona_index_updates_total", {"op": "ignored"}) == 1
    assert get("persona_index_updates_total", {"op": "invalid"}) == 1
    assert get("persona_index_size") == len(expected)
    assert get("persona_index_update_log_lag_records") == 0
    # Each IVF build chose its nprobe from the recall target and exported what it measured.
    for k in ("10", "50"):
        assert (get("persona_index_nprobe", {"k": k}) or 0) >= 1
        assert (get("persona_index_recall_ratio", {"k": k}) or 0) >= CFG.recall_target
    assert (get("persona_index_memory_bytes", {"part": "vectors"}) or 0) > len(expected) * DIM * 4

    # A replica started later reads the log from the beginning into the same index,
    # here without threads: catch_up polls in the calling thread.
    second = LookalikeIndex(CFG)
    replica = IndexFollower(bootstrap, topic, second, "v1")
    try:
        assert replica.catch_up(timeout_s=30)
    finally:
        replica.stop()
    assert replica._consumer is None  # noqa: SLF001
    assert_matches(second, expected, users)
    # catch_up rebuilt it like the first (one IVF list at this size: both search exactly).
    assert second.kind == first.kind == "ivf"
    q = normalise(rng.standard_normal((5, DIM)))
    assert [[u for u, _ in h] for h in first.search(q, 5)] == [
        [u for u, _ in h] for h in second.search(q, 5)
    ]


def assert_matches(idx: LookalikeIndex, expected: dict[str, np.ndarray], users: list[str]) -> None:
    got = contents(idx, users)
    assert set(got) == set(expected)
    for u, v in expected.items():
        assert np.allclose(got[u], v, atol=1e-6), u
    assert idx.size == len(expected)
