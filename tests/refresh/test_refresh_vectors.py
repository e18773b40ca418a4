"""Contract tests of VectorStore against a single Valkey node and a 3-node cluster."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from services.stack import EmbeddedStack
from services.store import layout
from services.store.client import Client, connect
from services.store.records import StoredVector, pack_vector, unpack_vector, vector_key
from services.store.vectors import CutoverError, UserWrite, VectorStore

pytestmark = pytest.mark.integration
_n = itertools.count()


@pytest.fixture(params=["single", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    st: EmbeddedStack = request.getfixturevalue(
        "stack" if request.param == "single" else "cluster_stack"
    )
    c = connect(st.addresses.redis)
    try:
        yield c
    finally:
        c.close()


def _ver() -> str:
    return f"vtest-{next(_n)}-{np.random.randint(1 << 30)}"


def _vec(uid: str, ver: str, wv: int, ts: int = 1000, dim: int = 8, seed: int = 0) -> StoredVector:
    rng = np.random.default_rng(seed + wv)
    return StoredVector(uid, ver, rng.normal(size=dim).astype(np.float32), ts, wv + 1, wv)


def test_record_round_trip_and_refusals() -> None:
    v = _vec("u", "v1", 3)
    got = unpack_vector("u", "v1", pack_vector(v))
    assert np.array_equal(got.vector, v.vector) and got == StoredVector(
        "u", "v1", got.vector, 1000, 4, 3
    )
    half = unpack_vector("u", "v1", pack_vector(v, "float16"))
    assert half.vector.dtype == np.float32 and np.allclose(half.vector, v.vector, atol=1e-2)
    assert len(pack_vector(v, "float16")) == 24 + 2 * 8
    bad = bytearray(pack_vector(v))
    bad[0] = 2
    with pytest.raises(ValueError, match="layout"):
        unpack_vector("u", "v1", bytes(bad))
    with pytest.raises(ValueError):
        unpack_vector("u", "v1", pack_vector(v)[:-4])
    with pytest.raises(ValueError, match="must match"):
        vector_key("u", "a:b")


def test_put_get_history_order_and_missing(client: Client) -> None:
    store = VectorStore(client, history=3)
    ver = _ver()
    users = [f"hist-{ver}-{i}" for i in range(40)] + ["{odd}\n\x00 user"]
    for wv in range(5):
        store.put_batch([_vec(u, ver, wv, seed=i) for i, u in enumerate(users)])
    got = store.get_batch([*users, "nobody-" + ver], ver, history=10)
    assert got[-1] == []
    for i, (u, vs) in enumerate(zip(users, got[:-1], strict=True)):
        assert [v.window_version for v in vs] == [4, 3, 2]  # newest first, oldest dropped
        assert all(v.user_id == u and v.model_version == ver for v in vs)
        assert np.array_equal(vs[0].vector, _vec(u, ver, 4, seed=i).vector)
    assert [len(x) for x in store.get_batch(users[:2], ver)] == [1, 1]
    assert store.get_batch(users[:1], _ver()) == [[]]  # another version: its own namespace


def test_older_window_skipped_same_window_replaces(client: Client) -> None:
    store = VectorStore(client)
    ver, uid = _ver(), f"race-{_ver()}"
    store.put_batch([_vec(uid, ver, 5, ts=1)])
    store.put_batch([_vec(uid, ver, 4, ts=2)])  # a slower writer with an older window
    store.put_batch([_vec(uid, ver, 5, ts=3)])  # a replay of the same window
    [vs] = store.get_batch([uid], ver, history=4)
    assert [(v.window_version, v.computed_at_ms) for v in vs] == [(5, 3)]


def test_write_clears_dirty_only_when_window_unchanged(client: Client) -> None:
    store = VectorStore(client)
    ver = _ver()
    a, b = f"dirty-a-{ver}", f"dirty-b-{ver}"
    for u in (a, b):
        client.hset(layout.meta_key(u), "v", 7)
        client.zadd(layout.dirty_key(layout.bucket(u)), {u: 1})
    res = store.write([UserWrite(a, [_vec(a, ver, 7)], 7), UserWrite(b, [_vec(b, ver, 6)], 6)])
    assert (res.written, res.cleared, res.still_dirty) == (2, 1, 1)
    assert client.zscore(layout.dirty_key(layout.bucket(a)), a) is None
    assert client.zscore(layout.dirty_key(layout.bucket(b)), b) is not None
    client.zrem(layout.dirty_key(layout.bucket(b)), b)


def test_ttl_applied(client: Client) -> None:
    store = VectorStore(client, ttl_s=100)
    ver, uid = _ver(), f"ttl-{_ver()}"
    store.put_batch([_vec(uid, ver, 1)])
    assert 0 < int(client.pttl(vector_key(uid, ver))) <= 100_000
    VectorStore(client).put_batch([_vec(f"nottl-{ver}", ver, 1)])
    assert int(client.pttl(vector_key(f"nottl-{ver}", ver))) == -1


def test_pointer_flip_states_and_rollback(client: Client) -> None:
    store = VectorStore(client)
    v1, v2 = _ver(), _ver()
    store.set_active(v1)
    assert store.active_version() == v1 and store.versions()[v1] == "active"
    store.set_state(v2, "backfilling")
    with pytest.raises(CutoverError, match="not ready"):
        store.set_active(v2, require="ready")
    assert store.active_version() == v1
    store.set_state(v2, "ready")
    assert store.set_active(v2, require="ready") == v1
    assert store.active_version() == v2
    assert store.versions()[v1] == "ready" and store.versions()[v2] == "active"
    assert store.rollback() == (v2, v1)
    assert store.active_version() == v1 and store.versions()[v2] == "ready"
    with pytest.raises(CutoverError):
        store.set_state(v1, "retired")
    store.set_state(v2, "retired")
    with pytest.raises(CutoverError, match="retired"):
        store.set_active(v2)
