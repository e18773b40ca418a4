"""Back-fill of a version being promoted: every user with a window, read by SCAN.

SCAN returns every key present for the whole scan (it may return some twice), so every user
who has a window when the back-fill starts is visited; users who appear later are dirty and
the dirty path encodes them with every version written, the back-filling one included.
"""

from __future__ import annotations

from collections.abc import Iterator

from redis.cluster import RedisCluster

from services.store.client import Client

_META_MATCH = "p:{*}:m:*"


def _uid(key: bytes) -> str:
    # p:{B}:m:<uid>: the tag holds only digits, so the first "}:m:" ends the prefix
    return key[key.index(b"}:m:") + 4 :].decode("utf-8")


def scan_users(client: Client, count: int = 1000) -> Iterator[str]:
    """User ids of every window in the store (each node of a cluster scanned in turn)."""
    if isinstance(client, RedisCluster):
        for node in client.get_primaries():
            conn = client.get_redis_connection(node)
            for key in conn.scan_iter(match=_META_MATCH, count=count):
                yield _uid(key)
    else:
        for key in client.scan_iter(match=_META_MATCH, count=count):
            yield _uid(key)
