"""`VectorStore.read_batch` (thread-free read, decoded into arrays) against the reference
`get_batch` (StoredVector per record): same values, same order, on a single node and on a
cluster; float16 and mixed records through the slow path; bad records refused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import hiredis
import numpy as np
import pytest
from redis.crc import key_slot
from redis.exceptions import ResponseError, SlotNotCoveredError

from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.records import (
    StoredVector,
    VectorBatch,
    decode_batch,
    pack_vector,
    packed_lranges,
    vector_key,
)
from services.store.router import DeadlineReached
from services.store.vectors import VectorStore
from tests.serving.support import DB

pytestmark = pytest.mark.integration
VER = "v-read-batch"


def _assert_same(batch: VectorBatch, ref: list[list[StoredVector]], history: int) -> None:
    assert batch.count.tolist() == [len(vs) for vs in ref]
    assert batch.vectors.shape[:2] == (len(ref), history)
    for i, vs in enumerate(ref):
        for j, v in enumerate(vs):
            assert np.array_equal(batch.vectors[i, j], v.vector)
            assert batch.computed_at_ms[i, j] == v.computed_at_ms
            assert batch.n_events[i, j] == v.n_events
            assert batch.window_version[i, j] == v.window_version
        assert not batch.vectors[i, len(vs) :].any()


def _fill(store: VectorStore, n: int, dim: int = 8) -> list[str]:
    rng = np.random.default_rng(3)
    users = [f"rb{i}" for i in range(n)]
    for wv in (1, 2, 3):  # three values for the even users, one for the odd ones
        store.put_batch([
            StoredVector(u, VER, rng.normal(size=dim).astype(np.float32), 1000 * wv + i, i, wv)
            for i, u in enumerate(users) if wv == 1 or i % 2 == 0
        ])  # fmt: skip
    return users


def _store(url: str) -> Iterator[VectorStore]:
    client = connect(url)
    store = VectorStore(client)
    try:
        yield store
    finally:
        store.close()
        client.close()


@pytest.fixture(scope="module")
def cluster_store(cluster_stack: EmbeddedStack) -> Iterator[VectorStore]:
    yield from _store(cluster_stack.addresses.redis)


@pytest.fixture(scope="module")
def node_store(stack: EmbeddedStack) -> Iterator[VectorStore]:
    yield from _store(f"{stack.addresses.redis}/{DB}")


@pytest.mark.parametrize("which", ["node_store", "cluster_store"])
@pytest.mark.parametrize("history", [1, 2, 4])
def test_read_batch_matches_get_batch(request: pytest.FixtureRequest, which: str,
                                      history: int) -> None:  # fmt: skip
    store: VectorStore = request.getfixturevalue(which)
    users = _fill(store, 150)
    ask = [*users[:100], "nobody", users[3], *users[100:]]  # a missing one, a duplicate
    ref = store.get_batch(ask, VER, history=history)
    got = store.read_batch(ask, VER, history, time.monotonic() + 5)
    _assert_same(got, ref, history)
    raw = store.read_raw(ask, VER, history, time.monotonic() + 5)
    assert [len(r) for r in raw] == [len(vs) for vs in ref]


def test_nobody_found_and_expired_deadline(node_store: VectorStore) -> None:
    got = node_store.read_batch(["none-1", "none-2"], VER, 1, time.monotonic() + 5)
    assert got.count.tolist() == [0, 0] and got.dim == 0
    with pytest.raises(DeadlineReached):
        node_store.read_batch(["none-1"], VER, 1, time.monotonic() - 1)


def test_packed_lranges_are_what_a_packer_writes_for_the_layout_keys() -> None:
    ids = ["u1", "é" * 20, "x" * 256, "🙂", "u1", "y" * 1000, "z" * 5000]  # keys past 1 KiB
    for last in [0, 1, 9, 10, 255]:
        slots, cmds = packed_lranges(ids, VER, last)
        keys = [vector_key(u, VER) for u in ids]
        assert slots.tolist() == [key_slot(k) for k in keys]
        assert [b"".join(c) for c in cmds] == [
            hiredis.pack_command(("LRANGE", k, 0, last)) for k in keys
        ]


def test_a_stale_slot_map_is_followed_through_moved(cluster_store: VectorStore) -> None:
    """The replies are parsed straight off the sockets: a MOVED error reply must still come
    back as redis-py's redirection, so the reader learns the slot map again and re-reads."""
    users = _fill(cluster_store, 20)
    ref = cluster_store.get_batch(users, VER, history=2)
    nm = cluster_store.client.nodes_manager  # type: ignore[union-attr]
    slot = key_slot(vector_key(users[0], VER))
    owner = nm.slots_cache[slot][0]
    other = next(n for n in cluster_store.client.get_primaries() if n.name != owner.name)  # type: ignore[union-attr]
    cluster_store.read_batch(users, VER, 2, time.monotonic() + 5)  # the reader maps the slots
    # a new map, as a refresh makes, that sends users[0]'s read to the wrong node
    nm.slots_cache = {**nm.slots_cache, slot: [other]}
    got = cluster_store.read_batch(users, VER, 2, time.monotonic() + 5)
    _assert_same(got, ref, 2)
    assert nm.slots_cache[slot][0].name == owner.name  # the map was learnt again


def test_a_slot_the_map_lacks_is_refused_not_misrouted(cluster_store: VectorStore) -> None:
    users = _fill(cluster_store, 5)
    nm = cluster_store.client.nodes_manager  # type: ignore[union-attr]
    slot = key_slot(vector_key(users[0], VER))
    nm.slots_cache = {s: owners for s, owners in nm.slots_cache.items() if s != slot}
    try:
        with pytest.raises(SlotNotCoveredError):
            cluster_store.read_batch(users, VER, 1, time.monotonic() + 5)
    finally:
        nm.initialize()
    got = cluster_store.read_batch(users, VER, 1, time.monotonic() + 5)
    _assert_same(got, cluster_store.get_batch(users, VER, history=1), 1)


def test_an_error_reply_is_raised_and_the_connection_stays_usable(node_store: VectorStore) -> None:
    users = _fill(node_store, 4)
    node_store.client.set(vector_key("wrong-type", VER), b"not a list")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        node_store.read_raw([users[0], "wrong-type", users[1]], VER, 1, time.monotonic() + 5)
    ref = node_store.get_batch(users, VER, history=1)
    _assert_same(node_store.read_batch(users, VER, 1, time.monotonic() + 5), ref, 1)


def test_decode_slow_path_and_bad_records() -> None:
    v32 = StoredVector("a", VER, np.arange(4, dtype=np.float32), 5, 6, 7)
    v16 = StoredVector("b", VER, np.ones(4, dtype=np.float32), 8, 9, 10)
    rec32, rec16 = pack_vector(v32), pack_vector(v16, "float16")
    got = decode_batch([[rec32], [rec16], []], 1)  # mixed lengths: record by record
    _assert_same(got, [[v32], [v16], []], 1)
    with pytest.raises(ValueError):
        decode_batch([[rec32], [pack_vector(StoredVector("c", VER, np.ones(5), 0, 0, 0))]], 1)
    with pytest.raises(ValueError):
        decode_batch([[b"\x02" + rec32[1:]]], 1)  # layout 2
    with pytest.raises(ValueError):
        decode_batch([[rec32[:-4]]], 1)  # header says 4 values, 3 there


@pytest.mark.parametrize("history", [1, 3])
def test_decode_when_every_user_has_every_value(history: int) -> None:
    """All found with full history: the records are the batch as they are (no scatter);
    the same values as when one more user, not found, forces the scatter."""
    rng = np.random.default_rng(history)

    def value(i: int, j: int) -> StoredVector:
        return StoredVector(f"u{i}", VER, rng.standard_normal(8).astype(np.float32),
                            1000 * i + j, i, j)  # fmt: skip

    ref = [[value(i, j) for j in range(history)] for i in range(5)]
    replies = [[pack_vector(v) for v in vs] for vs in ref]
    full = decode_batch(replies, history)
    _assert_same(full, ref, history)
    scattered = decode_batch([*replies, []], history)
    assert np.array_equal(full.vectors, scattered.vectors[:5])
    for f in ("computed_at_ms", "n_events", "window_version"):
        assert getattr(full, f).dtype == np.int64
        assert np.array_equal(getattr(full, f), getattr(scattered, f)[:5])
