"""Thread-free pipelined reads over the shard connections, bounded by a deadline.

`sharded.execute` runs one redis-py pipeline per shard on a thread each; for a 100-key read
that is three thread hand-offs and redis-py's per-command pipeline bookkeeping on top of
the round trip. `ShardReader.read` does the same read on the calling thread: the calls are
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
    [[rec]] = reader.read(client, [(key, ("LRANGE", key, 0, 0))], time.monotonic() + 0.05)
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, InvalidResponse, TryAgainError

from services.store.client import Client
from services.store.sharded import node_groups, primary_of

# (routing key or its cluster slot, command args or the command already packed in RESP)
Call = tuple[bytes | int, tuple[Any, ...] | bytes]
_RECV_BYTES = 256 * 1024


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
        self._threads = ThreadPoolExecutor(connect_threads, thread_name_prefix="store-connect")

    def read(self, client: Client, calls: Sequence[Call], deadline: float) -> list[Any]:
        """Results of `calls` in order (error replies as exception values, not raised).

        Raises `DeadlineReached` when `deadline` (time.monotonic()) passes first, and
        redis.ConnectionError / redis.TimeoutError when the store fails sooner.
        """
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(4):
            redirected = self._read_once(client, calls, todo, deadline, results)
            if not redirected or attempt == 3:
                break
            if isinstance(client, RedisCluster):
                client.nodes_manager.initialize()  # the slot map moved: learn it again
            todo = redirected
        return results

    def _read_once(
        self, client: Client, calls: Sequence[Call], todo: list[int], deadline: float,
        results: list[Any],
    ) -> list[int]:  # fmt: skip
        """Read `todo` into `results`; the indices whose reply was a redirection."""
        groups = _route(client, calls, todo)
        sent: list[tuple[Any, Any, list[int]]] = []
        drained = 0
        try:
            for pool, idx in groups:
                conn = self._acquire(pool, deadline)
                sent.append((pool, conn, idx))
                packed = b"".join([_packed(calls[i][1]) for i in idx])
                conn.send_packed_command([packed], check_health=False)
            for _pool, conn, idx in sent:
                for i, reply in zip(idx, _read_replies(conn, len(idx), deadline), strict=True):
                    results[i] = reply
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
        return [i for i in todo if isinstance(results[i], (AskError, TryAgainError))]

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
    reader = hiredis.Reader(**kwargs)
    out: list[Any] = []
    try:
        while True:
            reply = reader.gets()
            while reply is not False:
                out.append(reply)
                if len(out) == n:
                    if reader.has_data():
                        raise InvalidResponse("the store sent more replies than asked for")
                    return out
                reply = reader.gets()
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


def _packed(cmd: tuple[Any, ...] | bytes) -> bytes:
    return cmd if isinstance(cmd, bytes) else hiredis.pack_command(cmd)


def _route(client: Client, calls: Sequence[Call], todo: list[int]) -> list[tuple[Any, list[int]]]:
    """(connection pool, indices into `calls`) per primary serving the calls' slots."""
    if not isinstance(client, RedisCluster):
        return [(client.connection_pool, todo)]
    slots = [k if isinstance(k, int) else key_slot(k) for k in (calls[i][0] for i in todo)]
    return [
        (
            client.get_redis_connection(primary_of(client, slots[group[0]])).connection_pool,
            [todo[j] for j in group],
        )
        for group in node_groups(client, slots)
    ]
