"""Connect to a single Redis / Valkey node or a cluster, detected from the node itself."""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster

Client = redis.Redis | RedisCluster


def connect(url: str, **kwargs: Any) -> Client:
    """A client for `url`: a `RedisCluster` when that node has cluster mode on, else `Redis`.

    Args:
        url: `redis://HOST:PORT` of a single node or of any node of a cluster.
        kwargs: passed to the client (timeouts, password, ssl, ...).
    """
    kwargs.setdefault("socket_timeout", 5.0)
    kwargs.setdefault("socket_connect_timeout", 2.0)
    probe = redis.Redis.from_url(url, **kwargs)
    try:
        enabled = probe.info("cluster").get("cluster_enabled", 0)
    finally:
        probe.close()
    if int(enabled) == 1:
        return RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)
