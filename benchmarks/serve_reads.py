"""The serving benchmark's leaner bare read (`benchmarks/serve.py`): redis-py alone, without
its cluster pipeline's per-shard round trips."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from redis.crc import key_slot

from services.store.router import StoreRouter


class LeanRedisPyRead:
    """redis-py alone, lean: one kept connection per shard; every shard's LRANGEs packed by
    redis-py into one write, all shards written first, then `read_response` per reply."""

    def __init__(self, client: Any, router: StoreRouter) -> None:
        self.client = client
        self.router = router
        self.local = threading.local()  # .conns: node name -> connection, per thread
        self.taken: list[tuple[Any, Any]] = []  # (pool, connection), to give back

    def read(self, keys: list[bytes]) -> list[Any]:
        conns = getattr(self.local, "conns", None)
        if conns is None:
            conns = self.local.conns = {}
        groups: dict[str, list[bytes]] = {}
        slots = np.fromiter(map(key_slot, keys), np.int64, len(keys))
        for k, name in zip(keys, self.router.primary_names(slots), strict=True):
            groups.setdefault(name, []).append(k)
        sent = []
        for name, ks in groups.items():
            conn = conns.get(name)
            if conn is None:
                pool = self.client.get_redis_connection(
                    self.client.get_node(node_name=name)
                ).connection_pool
                conn = conns[name] = pool.get_connection()
                self.taken.append((pool, conn))
            conn.send_packed_command(conn.pack_commands([("LRANGE", k, 0, 0) for k in ks]))
            sent.append((conn, len(ks)))
        return [conn.read_response() for conn, n in sent for _ in range(n)]

    def close(self) -> None:
        for pool, conn in self.taken:
            pool.release(conn)
