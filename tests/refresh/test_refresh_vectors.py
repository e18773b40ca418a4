"""VectorStore beyond the store contract (tests/store/ runs that on every backend): the
record format, and TTLs (Valkey only), on a single node and a 3-node cluster."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from services.stack import EmbeddedStack
from services.store.client import Client, connect
from services.store.records import StoredVector, pack_vector, unpack_vector, vector_key
from services.store.vectors import UserWrite, VectorStore

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
    bad[0] = 3  # no such layout
    with pytest.raises(ValueError, match="layout"):
        unpack_vector("u", "v1", bytes(bad))
    bad[0] = 2  # layout 2 without its score block
    with pytest.raises(ValueError, match="layout 2"):
        unpack_vector("u", "v1", bytes(bad))
    with pytest.raises(ValueError):
        unpack_vector("u", "v1", pack_vector(v)[:-4])
    with pytest.raises(ValueError, match="must match"):
        vector_key("u", "a:b")


def test_ttl_applied(client: Client) -> None:
    store = VectorStore(client, ttl_s=100)
    ver, uid = _ver(), f"ttl-{_ver()}"
    store.put_batch([_vec(uid, ver, 1)])
    assert 0 < int(client.pttl(vector_key(uid, ver))) <= 100_000
    VectorStore(client).put_batch([_vec(f"nottl-{ver}", ver, 1)])
    assert int(client.pttl(vector_key(f"nottl-{ver}", ver))) == -1


def test_audience_sets_follow_the_mask_and_forget(client: Client) -> None:
    """write_vectors.lua keeps a layout-2 value's scores in the audience sets of the columns
    its version's mask names, only when the value is written; forget.lua takes the user out."""
    from services.store.audience import audience_key
    from services.store.forget import StoreForgetter
    from services.store.layout import bucket

    store = VectorStore(client)
    ver, uid = _ver(), f"aud-{_ver()}"
    cols = [{"outcome": "(any)", "horizon_ms": 1, "calibrated": True, "audience": a}
            for a in (True, False, True)]  # fmt: skip
    store.set_score_columns(ver, json.dumps({"columns": cols}))
    store.set_state(ver, "ready")  # forget reaches the versions the store knows
    keys = [audience_key(bucket(uid), ver, j) for j in range(3)]
    v = replace(_vec(uid, ver, 3), scores=np.array([0.25, 0.5, 0.75], np.float32))
    store.write([UserWrite(uid, [v])])
    assert [client.zscore(k, uid) for k in keys] == [0.25, None, 0.75]
    store.write([UserWrite(uid, [replace(v, window_version=2, scores=np.full(3, 0.1))])])
    assert client.zscore(keys[0], uid) == 0.25  # an older window: skipped, audience too
    store.write([UserWrite(uid, [replace(v, scores=np.full(3, 0.5))])])  # same window
    assert client.zscore(keys[2], uid) == 0.5
    forgetter = StoreForgetter(client)
    try:
        forgetter.forget([uid], at_ms=1)
    finally:
        forgetter.close()
    assert [client.zscore(k, uid) for k in keys] == [None, None, None]
    store.close()
    # with a TTL the sets a write touches expire with the version's vectors
    timed = VectorStore(client, ttl_s=100)
    timed.set_score_columns(ver, json.dumps({"columns": cols}))
    timed.write([UserWrite(uid, [replace(v, window_version=9)])])
    assert 0 < int(client.pttl(keys[0])) <= 100_000 and int(client.pttl(keys[1])) == -2
    timed.close()
