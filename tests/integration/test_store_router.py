"""The store router (services/store/router.py) and the redis-py internals it leans on.

The router is the one module allowed to use redis-py internals (ruff SLF001 elsewhere).
These tests pin the redis-py version it was written against and check each internal does
what the router assumes, so a redis-py upgrade fails here, by name, rather than as a
misrouted read in production.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import hiredis
import numpy as np
import pytest
import redis
from redis._parsers.base import BaseParser
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AskError, MovedError, ResponseError, TryAgainError

from services.stack import EmbeddedStack
from services.store.client import Client, connect
from services.store.router import StoreRouter

pytestmark = pytest.mark.integration

REDIS_PY = "8.1.0"  # the version whose internals router.py was read against


def test_redis_py_is_the_version_the_router_was_written_for() -> None:
    assert redis.__version__ == REDIS_PY, (
        f"redis-py {redis.__version__}: re-read what services/store/router.py uses from it "
        "(nodes_manager.slots_cache / initialize, Connection._sock, "
        "redis._parsers.base.BaseParser.parse_error), run this file, then update REDIS_PY"
    )


def test_parse_error_classifies_redirections_as_the_router_expects() -> None:
    moved = BaseParser.parse_error("MOVED 3999 127.0.0.1:7001")
    assert isinstance(moved, MovedError) and isinstance(moved, AskError)
    assert isinstance(BaseParser.parse_error("ASK 3999 127.0.0.1:7001"), AskError)
    assert isinstance(BaseParser.parse_error("TRYAGAIN multi-key"), TryAgainError)
    wrong = BaseParser.parse_error("WRONGTYPE Operation against a key")
    assert isinstance(wrong, ResponseError) and not isinstance(wrong, AskError)


@pytest.fixture(params=["node", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    which = "stack" if request.param == "node" else "cluster_stack"
    st: EmbeddedStack = request.getfixturevalue(which)
    c = connect(st.addresses.redis)
    yield c
    c.close()


def test_a_connected_connection_exposes_its_socket(client: Client) -> None:
    pool = (
        client.get_redis_connection(client.get_primaries()[0]).connection_pool
        if isinstance(client, RedisCluster)
        else client.connection_pool
    )
    conn = pool.connection_class(**pool.connection_kwargs)
    conn.connect()
    try:
        assert isinstance(conn._sock, socket.socket)  # noqa: SLF001
    finally:
        conn.disconnect()
    assert conn._sock is None  # noqa: SLF001


def test_the_slot_map_is_a_dict_replaced_on_refresh(cluster_stack: EmbeddedStack) -> None:
    """The router reads `slots_cache[slot][0]` as the slot's primary and notices a new map
    by identity (a refresh builds a new dict)."""
    client = connect(cluster_stack.addresses.redis)
    try:
        assert isinstance(client, RedisCluster)
        nm = client.nodes_manager
        before = nm.slots_cache
        assert isinstance(before, dict) and len(before) == REDIS_CLUSTER_HASH_SLOTS
        assert all(owners[0].server_type == "primary" for owners in before.values())
        nm.initialize()
        assert nm.slots_cache is not before
        key = b"p:{7}:probe"
        assert nm.slots_cache[key_slot(key)][0].name == client.get_node_from_key(key).name
    finally:
        client.close()


def test_execute_and_read_packed_agree_in_order_with_errors_as_values(client: Client) -> None:
    router = StoreRouter(client)
    try:
        keys = [f"router-test:{{{i}}}:{time.monotonic_ns()}".encode() for i in range(300)]
        router.execute([(k, ("RPUSH", k, k)) for k in keys])
        bad = keys[7]
        client.set(bad, b"not a list")
        calls = [(k, ("LRANGE", k, 0, 0)) for k in keys]
        got = router.execute(calls)
        slots = np.fromiter((key_slot(k) for k in keys), np.int64, len(keys))
        cmds = [(hiredis.pack_command(args),) for _, args in calls]
        read = router.read_packed(slots, cmds, time.monotonic() + 5)
        for i, k in enumerate(keys):
            if k == bad:
                assert isinstance(got[i], ResponseError) and isinstance(read[i], ResponseError)
            else:
                assert got[i] == read[i] == [k]
        groups = router.node_groups(slots.tolist())
        assert sorted(i for g in groups for i in g) == list(range(len(keys)))
        assert len(groups) == len(router.primaries())
        names = router.primary_names(slots)
        assert all(len({names[i] for i in g}) == 1 for g in groups)
        router.execute([(k, ("DEL", k)) for k in keys])
    finally:
        router.close()
