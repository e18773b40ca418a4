"""Thread-free pipelined reads over the shard connections, bounded by a deadline.

`sharded.execute` runs one redis-py pipeline per shard on a thread each; for a 100-key read
that is three thread hand-offs and redis-py's per-command pipeline bookkeeping on top of
the round trip. `ShardReader.read_packed` does the same read on the calling thread: the calls are
grouped by the node that owns each call's slot, every node's commands are written first
(one packed write per node, so the nodes work in parallel), then the replies are read node
after node. Every socket wait is bounded by the time left until `deadline` (monotonic), so
a slow or silent store raises `DeadlineReached` at the deadline instead of hanging.

Connections are the reader's own, made from each node pool's connection class and keyword
arguments (TLS, credentials, db as configured) and kept idle LIFO per pool. Only making a
connection happens on a thread (connect + handshake honour the client's timeouts and
retries, which the deadline cannot shorten): the read waits for it at most until the
deadline, and a connection finished after that is kept for the next read. A connection
that failed, timed out or holds unread bytes is closed, never reused. A MOVED / ASK /
TRYAGAIN reply refreshes the slot map and those calls are read again.

Example::

    reader = ShardReader()
    cmd = (hiredis.pack_command(("LRANGE", key, 0, 0)),)
    [[rec]] = reader.read_packed(client, np.array([key_slot(key)]), [cmd],
                                 time.monotonic() + 0.05)
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from itertools import chain, islice, repeat
from typing import Any

import hiredis
import numpy as np
import redis
from redis._parsers.base import BaseParser
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.exceptions import AskError, ClusterError, InvalidResponse, TryAgainError

from services.store.client import Client

# (routing key or its cluster slot, command args or the command already packed in RESP)
Packed = tuple[bytes, ...]  # one command's RESP, in pieces to be written one after the other
_RECV_BYTES = 256 * 1024
_MORE = object()  # hiredis: no complete reply buffered (a reply can be False under RESP3)
_REDIRECTS = (AskError, TryAgainError)  # MovedError is an AskError


class DeadlineReached(redis.TimeoutError):
    """The store did not answer before the read's deadline."""


class ShardReader:
    """Pipelined reads without thread hand-offs. Thread-safe; one per store is enough.

    Args:
        connect_threads: threads that make new connections (rarely busy: only at start and
            after a connection was dropped).
    """

    def __init__(self, connect_threads: int = 8) -> None:
        self._lock = threading.Lock()
        self._idle: dict[int, list[Any]] = defaultdict(list)  # id(pool) -> connections
        self._pools: dict[int, Any] = {}  # keeps the pools alive so their ids stay theirs
        self._slot_maps: dict[int, _SlotOwners] = {}  # id(cluster client) -> its slot map
        self._threads = ThreadPoolExecutor(connect_threads, thread_name_prefix="store-connect")

    def read_packed(
        self, client: Client, slots: np.ndarray, cmds: Sequence[Packed], deadline: float
    ) -> list[Any]:
        """Results of commands packed in RESP, in order (error replies as exception values,
        not raised): `cmds[i]` (its RESP bytes in pieces, written one after the other) goes
        to the node serving cluster slot `slots[i]` ((N,) ints; ignored on a single node).
        Routing is numpy over the slots, each node's write one join, the replies parsed in C.

        Raises `DeadlineReached` when `deadline` (time.monotonic()) passes first, and
        redis.ConnectionError / redis.TimeoutError when the store fails sooner.
        """
        results: list[Any] = [None] * len(cmds)
        todo = np.arange(len(cmds))
        for attempt in range(4):
            redirected = self._read_once(client, slots, cmds, todo, deadline, results)
            if not len(redirected) or attempt == 3:
                break
            if isinstance(client, RedisCluster):
                client.nodes_manager.initialize()  # the slot map moved: learn it again
            todo = redirected
        return results

    def _read_once(
        self, client: Client, slots: np.ndarray, cmds: Sequence[Packed], todo: np.ndarray,
        deadline: float, results: list[Any],
    ) -> np.ndarray:  # fmt: skip
        """Read `todo` into `results`; the indices whose reply was a redirection."""
        groups = self._route(client, slots, todo)
        sent: list[tuple[Any, Any, list[int]]] = []
        got: list[Any] = []  # the replies, in the order of `sent`'s indices
        drained = 0
        try:
            for pool, idx in groups:
                conn = self._acquire(pool, deadline)
                sent.append((pool, conn, idx))
                data = b"".join(chain.from_iterable(map(cmds.__getitem__, idx)))
                conn.send_packed_command([data], check_health=False)
            for _pool, conn, idx in sent:
                got += _read_replies(conn, len(idx), deadline)
                drained += 1
        except redis.TimeoutError as exc:
            if time.monotonic() >= deadline and not isinstance(exc, DeadlineReached):
                raise DeadlineReached(str(exc)) from exc
            raise
        finally:
            for n, (pool, conn, _) in enumerate(sent):
                if n < drained:
                    self._release(pool, conn)
                else:
                    conn.disconnect()  # replies left unread: the connection is out of step
        order = [i for _, _, idx in sent for i in idx]  # (len(todo),) where each reply goes
        if len(order) == len(results):  # every call: place all replies at once
            results[:] = map(got.__getitem__, np.argsort(order).tolist())
        else:
            for i, reply in zip(order, got, strict=True):
                results[i] = reply
        if not any(map(isinstance, got, repeat(_REDIRECTS))):
            return todo[:0]
        return np.array([i for i in order if isinstance(results[i], _REDIRECTS)], np.int64)

    def _route(
        self, client: Client, slots: np.ndarray, todo: np.ndarray
    ) -> list[tuple[Any, list[int]]]:
        """(connection pool, indices into the calls) per primary serving `slots[todo]`."""
        if not isinstance(client, RedisCluster):
            return [(client.connection_pool, todo.tolist())]
        owners = self._owners(client)
        node = owners.node[slots[todo]]  # (T,) index into owners.pools, -1: slot not mapped
        try:
            present = np.bincount(node, minlength=len(owners.pools))  # raises on -1
        except ValueError:
            owners = self._owners(client, refresh=True)
            node = owners.node[slots[todo]]
            if (node < 0).any():  # uncovered: redis-py says so (SlotNotCoveredError)
                client.nodes_manager.get_node_from_slot(int(slots[todo][node < 0][0]))
                raise ClusterError("slot map changed while routing; try again") from None
            present = np.bincount(node, minlength=len(owners.pools))
        return [(owners.pools[k], todo[node == k].tolist()) for k in np.flatnonzero(present)]

    def _owners(self, client: RedisCluster, refresh: bool = False) -> _SlotOwners:
        """The client's current slot map as an array, remade when the client replaced its
        map (a refresh after MOVED makes a new one). redis-py also patches single slots in
        place after a MOVED it saw itself; a read routed by the older map then gets MOVED
        too, and the refresh that follows remakes this one."""
        slots_cache = client.nodes_manager.slots_cache
        with self._lock:
            have = self._slot_maps.get(id(client))
        if have is None or have.source is not slots_cache or refresh:
            have = _SlotOwners.of(client, slots_cache)
            with self._lock:
                self._slot_maps[id(client)] = have
        return have

    def _acquire(self, pool: Any, deadline: float) -> Any:
        """An idle connected connection of `pool`, or a new one this read asks a connect
        thread for and waits for until `deadline` (reads that need a connection at the same
        time each get their own, made in parallel, as a redis-py pool would). A connection
        finished after the deadline goes on the idle list for a later read."""
        key = id(pool)
        while True:
            with self._lock:
                idle = self._idle[key]
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if conn.is_connected and not conn.can_read(timeout=0):
                return conn
            conn.disconnect()  # closed by the server, or bytes nobody asked for
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineReached("no store connection before the deadline")
        with self._lock:
            self._pools[key] = pool
        made = self._threads.submit(_connect, pool)
        try:
            return made.result(timeout=left)
        except FutureTimeout:
            if not made.cancel():  # still connecting: keep the connection if it gets one
                made.add_done_callback(lambda f: self._keep(pool, f))
            raise DeadlineReached("no store connection before the deadline") from None

    def _keep(self, pool: Any, made: Future[Any]) -> None:
        if not made.cancelled() and made.exception() is None:
            self._release(pool, made.result())

    def _release(self, pool: Any, conn: Any) -> None:
        with self._lock:
            self._idle[id(pool)].append(conn)

    def close(self) -> None:
        """Close the idle connections and stop the connect threads."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.disconnect()


def _read_replies(conn: Any, n: int, deadline: float) -> list[Any]:
    """The next `n` replies on `conn`, parsed by one hiredis reader fed straight from the
    socket: redis-py's `read_response` costs ~10 us a reply in Python bookkeeping, this
    ~1 us. Error replies come back as redis-py's exception values (MOVED, ASK, ... as its
    parser classifies them), not raised. Uses the connection's socket (redis-py 8's
    `_sock`); the connection's own parser is left with nothing buffered, as it must be,
    since exactly the replies asked for are read (bytes beyond them: out of step, raised).
    """
    sock = conn._sock
    if sock is None:
        raise redis.ConnectionError("store connection closed")
    kwargs: dict[str, Any] = {
        "protocolError": InvalidResponse,
        "replyError": BaseParser.parse_error,
    }
    if conn.encoder.decode_responses:
        kwargs["encoding"] = conn.encoder.encoding
    reader = hiredis.Reader(notEnoughData=_MORE, **kwargs)
    out: list[Any] = []
    try:
        while True:
            out += islice(iter(reader.gets, _MORE), n - len(out))  # what is buffered, in C
            if len(out) == n:
                if reader.has_data():
                    raise InvalidResponse("the store sent more replies than asked for")
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineReached("the store did not answer before the deadline")
            sock.settimeout(left)
            try:
                data = sock.recv(_RECV_BYTES)
            except TimeoutError:
                raise DeadlineReached("the store did not answer before the deadline") from None
            except OSError as exc:
                raise redis.ConnectionError(f"store read failed: {exc}") from exc
            if not data:
                raise redis.ConnectionError("store connection closed by the server")
            reader.feed(data)
    finally:
        sock.settimeout(conn.socket_timeout)


def _connect(pool: Any) -> Any:
    """A new connection of `pool`'s class and settings (TLS, credentials, db), connected."""
    conn = pool.connection_class(**pool.connection_kwargs)
    conn.connect()
    return conn


@dataclass(frozen=True)
class _SlotOwners:
    """A cluster client's slot map as arrays: `node[slot]` indexes `pools` (the primary's
    connection pool), -1 for a slot the map lacks. `source` is the map it was read from."""

    source: object
    node: np.ndarray  # (16384,) int
    pools: list[Any]

    @classmethod
    def of(cls, client: RedisCluster, slots_cache: dict[int, list[Any]]) -> _SlotOwners:
        node = np.full(REDIS_CLUSTER_HASH_SLOTS, -1, np.int64)
        index: dict[str, int] = {}
        pools: list[Any] = []
        for slot, owners in list(slots_cache.items()):
            if not owners:
                continue
            k = index.get(owners[0].name)
            if k is None:
                k = index[owners[0].name] = len(pools)
                pools.append(client.get_redis_connection(owners[0]).connection_pool)
            node[slot] = k
        return cls(slots_cache, node, pools)
