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
from redis.exceptions import ResponseError

from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.scatter import DeadlineReached
from services.store.vectors import (
    StoredVector,
    VectorBatch,
    VectorStore,
    _lrange,
    _lrange_tail,
    _vector_key,
    decode_batch,
    pack_vector,
    vector_key,
)
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
        store.close_reads()
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


def test_fast_key_is_the_layout_key() -> None:
    for u in ["u1", "é" * 20, "x" * 256]:
        slot, key = _vector_key(u, (VER + ":").encode())
        assert key == vector_key(u, VER) and slot == key_slot(key)


def test_packed_lrange_is_what_a_packer_writes() -> None:
    for key in [b"k", "p:{3}:v:v1:é".encode(), b"x" * 300]:
        for last in [0, 1, 9, 10, 255]:
            assert _lrange(key, _lrange_tail(last)) == hiredis.pack_command(
                ("LRANGE", key, 0, last)
            )


def test_a_stale_slot_map_is_followed_through_moved(cluster_store: VectorStore) -> None:
    """The replies are parsed straight off the sockets: a MOVED error reply must still come
    back as redis-py's redirection, so the reader learns the slot map again and re-reads."""
    users = _fill(cluster_store, 20)
    ref = cluster_store.get_batch(users, VER, history=2)
    nm = cluster_store.client.nodes_manager  # type: ignore[union-attr]
    slot = key_slot(vector_key(users[0], VER))
    owner = nm.slots_cache[slot][0]
    other = next(n for n in cluster_store.client.get_primaries() if n.name != owner.name)  # type: ignore[union-attr]
    nm.slots_cache[slot] = [other]  # the client now sends users[0]'s read to the wrong node
    got = cluster_store.read_batch(users, VER, 2, time.monotonic() + 5)
    _assert_same(got, ref, 2)
    assert nm.slots_cache[slot][0].name == owner.name  # the map was learnt again


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
