"""Connect to a single Redis / Valkey node or a cluster, detected from the node itself.

Credentials: a `redis://user:pass@host` URL works (redis-py parses it), but a URL given as a
flag shows in `ps`. `connect` therefore also takes them from the environment, so every
command (ingest, refresh, serve, cutover) gets them the same way without a flag:

- `PERSONA_REDIS_USERNAME`: an ACL user (default: the `default` user);
- `PERSONA_REDIS_PASSWORD_FILE`: a file holding the password (a mounted secret), or
- `PERSONA_REDIS_PASSWORD`: the password itself.

TLS: a `rediss://` URL; `ssl_ca_certs=` and friends pass through `kwargs`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

Client = redis.Redis | RedisCluster


def credentials_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`username` / `password` keyword arguments from PERSONA_REDIS_* (empty when unset).

    >>> credentials_from_env({"PERSONA_REDIS_USERNAME": "persona", "PERSONA_REDIS_PASSWORD": "s"})
    {'username': 'persona', 'password': 's'}
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    if user := env.get("PERSONA_REDIS_USERNAME"):
        out["username"] = user
    if path := env.get("PERSONA_REDIS_PASSWORD_FILE"):
        secret = Path(path).read_text().strip()
        if not secret:
            raise ValueError(f"PERSONA_REDIS_PASSWORD_FILE {path} is empty")
        out["password"] = secret
    elif password := env.get("PERSONA_REDIS_PASSWORD"):
        out["password"] = password
    return out


def connect(url: str, **kwargs: Any) -> Client:
    """A client for `url`: a `RedisCluster` when that node has cluster mode on, else `Redis`.

    Args:
        url: `redis://HOST:PORT` (or `rediss://` for TLS) of a single node or of any node
            of a cluster.
        kwargs: passed to the client (timeouts, password, ssl, ...). Credentials not given
            here nor in the URL come from the environment (`credentials_from_env`).
    """
    kwargs.setdefault("socket_timeout", 5.0)
    kwargs.setdefault("socket_connect_timeout", 2.0)
    if "password" not in kwargs and "@" not in url.split("//", 1)[-1].split("/", 1)[0]:
        for k, v in credentials_from_env().items():
            kwargs.setdefault(k, v)
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
