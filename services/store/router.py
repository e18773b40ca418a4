"""Every command the stores send goes through one `StoreRouter`: to a single node, or to the
node of a cluster that serves the command's slot.

Routing: the slot of a call (of its routing key, or given), the primary serving that slot in
the client's slot map, read as an array (remade when the client replaces its map), one batch
per node. A MOVED / ASK / TRYAGAIN reply (slots migrated, node replaced) refreshes the slot
map and those calls go out again, up to four attempts; a slot no node serves raises
redis-py's SlotNotCoveredError rather than being misrouted. Two ways to run a batch:

- `execute(calls)`: command tuples, one redis-py pipeline per node, the nodes in parallel
  threads. redis-py's own cluster pipeline asks the server for the keys of every EVALSHA it
  does not know (a round trip per command in redis-py 8.1), so the stores route by themselves.
- `read_packed(slots, cmds, deadline)`: commands already packed in RESP, on the calling
  thread: every node's commands written in one write (so the nodes work in parallel), then
  the replies parsed by one hiredis reader fed straight from each socket (redis-py's
  `read_response` costs ~10 us a reply in Python, this ~1 us). Every socket wait is bounded
  by the time left until `deadline` (monotonic): a slow or silent store raises
  `DeadlineReached` instead of hanging. This is the serving read.

`read_packed` uses connections of its own, made from each node pool's connection class and
keyword arguments (TLS, credentials, db as configured) and kept idle LIFO per pool. Only
making a connection happens on a thread (connect + handshake honour the client's timeouts,
which the deadline cannot shorten): the read waits for it at most until the deadline, and a
connection finished after that is kept for the next read. A connection that failed, timed
out or holds unread bytes is closed, never reused.

redis-py internals used here, and by no other module (ruff's SLF001 checks the underscored
ones; tests/unit/test_router_redis_py.py pins the redis-py version they were read from):
`RedisCluster.nodes_manager.slots_cache` (slot -> [primary, replicas]) and `.initialize()`,
`Connection._sock` (the connected socket), `redis._parsers.base.BaseParser.parse_error`
(an error reply as redis-py's exception class).

Example::

    router = StoreRouter(connect("redis://127.0.0.1:7000"))
    router.execute([(key, ("LRANGE", key, 0, 0))])          # [[b"..."]]
    cmd = (hiredis.pack_command(("LRANGE", key, 0, 0)),)
    router.read_packed(np.array([key_slot(key)]), [cmd], time.monotonic() + 0.05)
    router.close()
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
from redis.exceptions import AskError, ClusterError, InvalidResponse, ResponseError, TryAgainError

from services.store.client import Client

Call = tuple[bytes, Sequence[Any]]  # (routing key, full command args)
Packed = tuple[bytes, ...]  # one command's RESP, in pieces to be written one after the other
_ATTEMPTS = 4
_RECV_BYTES = 256 * 1024
_MORE = object()  # hiredis: no complete reply buffered (a reply can be False under RESP3)
_REDIRECTS = (AskError, TryAgainError)  # MovedError is an AskError


class DeadlineReached(redis.TimeoutError):
    """The store did not answer before the read's deadline."""


def raise_first(results: Sequence[Any]) -> None:
    """Raise the first exception value among `results` (errors come back as values)."""
    if any(map(isinstance, results, repeat(Exception))):  # (in C: the batch read's path)
        raise next(r for r in results if isinstance(r, Exception))


def _redirected(r: Any) -> bool:
    return isinstance(r, _REDIRECTS) or (
        isinstance(r, ResponseError) and str(r).startswith(("MOVED", "ASK", "TRYAGAIN"))
    )


class StoreRouter:
    """Routes the calls of one client. Thread-safe; one per store is enough.

    Args:
        client: from `services.store.client.connect` (a node or a cluster).
        threads: pipeline threads (one per node in flight) and, as many again, threads
            that make `read_packed`'s connections (busy only at start and after a drop).
    """

    def __init__(self, client: Client, threads: int = 8) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self._lock = threading.Lock()
        self._map: _SlotOwners | None = None
        self._idle: dict[int, list[Any]] = defaultdict(list)  # id(pool) -> connections
        self._pools: dict[int, Any] = {}  # keeps the pools alive so their ids stay theirs
        self._pipes = ThreadPoolExecutor(threads, thread_name_prefix="store-pipe")
        self._connects = ThreadPoolExecutor(threads, thread_name_prefix="store-connect")

    # ----- routing -----------------------------------------------------------------------

    def node_groups(self, slots: Sequence[int]) -> list[list[int]]:
        """Indices into `slots`, grouped by the node serving each slot (a single node: one
        group). For calls that touch several slots of one node (scripts with the
        allow-cross-slot-keys flag)."""
        if not self.cluster:
            return [list(range(len(slots)))]
        arr = np.asarray(slots, np.int64)
        return [idx for _, idx in self._route(arr, np.arange(len(arr)))[1]]

    def primary_names(self, slots: np.ndarray) -> list[str]:
        """The name (`host:port`) of the primary serving each of `slots` ((N,) ints); on a
        single node one name, "node", for all."""
        if not self.cluster:
            return ["node"] * len(slots)
        owners = self._owners()
        node = owners.node[slots]
        if (node < 0).any():
            owners = self._owners(refresh=True)
            node = owners.node[slots]
        return [owners.names[k] for k in node.tolist()]

    def primaries(self) -> list[redis.Redis]:
        """A client per primary node (the client itself on a single node), e.g. for SCAN."""
        if not isinstance(self.client, RedisCluster):
            return [self.client]
        return [self.client.get_redis_connection(n) for n in self.client.get_primaries()]

    def _route(
        self, slots: np.ndarray, todo: np.ndarray
    ) -> tuple[_SlotOwners, list[tuple[int, list[int]]]]:
        """The slot map used, and per primary serving `slots[todo]` (its index in the
        map's lists, the indices into the calls it serves)."""
        owners = self._owners()
        node = owners.node[slots[todo]]  # (T,) index into owners.pools, -1: slot not mapped
        try:
            present = np.bincount(node, minlength=len(owners.pools))  # raises on -1
        except ValueError:
            owners = self._owners(refresh=True)
            node = owners.node[slots[todo]]
            if (node < 0).any():  # uncovered: redis-py says so (SlotNotCoveredError)
                self._cluster_client().nodes_manager.get_node_from_slot(
                    int(slots[todo][node < 0][0])
                )
                raise ClusterError("slot map changed while routing; try again") from None
            present = np.bincount(node, minlength=len(owners.pools))
        return owners, [(int(k), todo[node == k].tolist()) for k in np.flatnonzero(present)]

    def _owners(self, refresh: bool = False) -> _SlotOwners:
        """The client's current slot map as an array, remade when the client replaced its
        map (a refresh after MOVED makes a new one). redis-py also patches single slots in
        place after a MOVED it saw itself; a call routed by the older map then gets MOVED
        too, and the refresh that follows remakes this one."""
        client = self._cluster_client()
        slots_cache = client.nodes_manager.slots_cache
        have = self._map
        if have is None or have.source is not slots_cache or refresh:
            have = self._map = _SlotOwners.of(client, slots_cache)
        return have

    def _cluster_client(self) -> RedisCluster:
        assert isinstance(self.client, RedisCluster)
        return self.client

    def relearn(self) -> None:
        """Learn the cluster's slot map again (no-op on a node): after MOVED, or a cross-slot
        script that met a key its node no longer serves (no MOVED for that)."""
        if isinstance(self.client, RedisCluster):
            self.client.nodes_manager.initialize()  # the slot map moved: learn it again

    # ----- pipelines on threads (writes, scripts) ----------------------------------------

    def execute(self, calls: Sequence[Call]) -> list[Any]:
        """Run `calls`, return their results in order (errors as exception values, not
        raised)."""
        if not isinstance(self.client, RedisCluster):
            return _pipeline(self.client, calls)
        keyslot = self.client.keyslot
        slots = np.fromiter((keyslot(k) for k, _ in calls), np.int64, len(calls))
        results: list[Any] = [None] * len(calls)
        todo = np.arange(len(calls))
        for attempt in range(_ATTEMPTS):
            owners, groups = self._route(slots, todo)
            jobs = [
                (idx, self._pipes.submit(_pipeline, owners.clients[k], [calls[i] for i in idx]))
                for k, idx in groups
            ]
            retry: list[int] = []
            for idx, job in jobs:
                for i, r in zip(idx, job.result(), strict=True):
                    results[i] = r
                    if _redirected(r):
                        retry.append(i)
            if not retry or attempt == _ATTEMPTS - 1:
                break
            self.relearn()
            todo = np.array(retry, np.int64)
        return results

    # ----- thread-free packed reads (serving) --------------------------------------------

    def read_packed(self, slots: np.ndarray, cmds: Sequence[Packed], deadline: float) -> list[Any]:
        """Results of commands packed in RESP, in order (error replies as exception values,
        not raised): `cmds[i]` (its RESP bytes in pieces) goes to the node serving cluster
        slot `slots[i]` ((N,) ints; ignored on a single node).

        Raises `DeadlineReached` when `deadline` (time.monotonic()) passes first, and
        redis.ConnectionError / redis.TimeoutError when the store fails sooner.
        """
        results: list[Any] = [None] * len(cmds)
        todo = np.arange(len(cmds))
        for attempt in range(_ATTEMPTS):
            redirected = self._read_once(slots, cmds, todo, deadline, results)
            if not len(redirected) or attempt == _ATTEMPTS - 1:
                break
            self.relearn()
            todo = redirected
        return results

    def _read_once(
        self, slots: np.ndarray, cmds: Sequence[Packed], todo: np.ndarray, deadline: float,
        results: list[Any],
    ) -> np.ndarray:  # fmt: skip
        """Read `todo` into `results`; the indices whose reply was a redirection."""
        if isinstance(self.client, RedisCluster):
            owners, groups = self._route(slots, todo)
            by_pool = [(owners.pools[k], idx) for k, idx in groups]
        else:
            by_pool = [(self.client.connection_pool, todo.tolist())]
        sent: list[tuple[Any, Any, list[int]]] = []
        got: list[Any] = []  # the replies, in the order of `sent`'s indices
        drained = 0
        try:
            for pool, idx in by_pool:
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
        made = self._connects.submit(_connect, pool)
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
        """Stop the threads and close `read_packed`'s idle connections (the client and its
        own connections stay the caller's)."""
        self._pipes.shutdown(wait=True)
        self._connects.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.disconnect()


def _pipeline(conn: Any, calls: Sequence[Call]) -> list[Any]:
    pipe = conn.pipeline(transaction=False)
    for _, args in calls:
        pipe.execute_command(*args)
    return list(pipe.execute(raise_on_error=False))


def _read_replies(conn: Any, n: int, deadline: float) -> list[Any]:
    """The next `n` replies on `conn`, parsed by one hiredis reader fed straight from the
    socket. Error replies come back as redis-py's exception values (MOVED, ASK, ... as its
    parser classifies them), not raised. The connection's own parser is left with nothing
    buffered, as it must be, since exactly the replies asked for are read (bytes beyond
    them: out of step, raised)."""
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
    """A cluster client's slot map as arrays: `node[slot]` indexes the primaries' lists
    (`names`, node `clients`, their connection `pools`), -1 for a slot the map lacks.
    `source` is the map it was read from."""

    source: object
    node: np.ndarray  # (16384,) int
    names: list[str]
    clients: list[redis.Redis]
    pools: list[Any]

    @classmethod
    def of(cls, client: RedisCluster, slots_cache: dict[int, list[Any]]) -> _SlotOwners:
        node = np.full(REDIS_CLUSTER_HASH_SLOTS, -1, np.int64)
        index: dict[str, int] = {}
        names: list[str] = []
        clients: list[redis.Redis] = []
        for slot, owners in list(slots_cache.items()):
            if not owners:
                continue
            k = index.get(owners[0].name)
            if k is None:
                k = index[owners[0].name] = len(names)
                names.append(owners[0].name)
                clients.append(client.get_redis_connection(owners[0]))
            node[slot] = k
        return cls(slots_cache, node, names, clients, [c.connection_pool for c in clients])
