"""Forgetting users in the store: a privacy request, or an expiry of inactive users.

For each user, one atomic script call (`forget.lua`, LAYOUT.md "Forgetting a user"): the
window, its event records and meta, the dirty mark and the vectors of every model version the
store knows (`p:{models}:states`) are deleted, and a marker is left in the meta hash: `x`,
the forget time (ingest refuses the user's events at or before it, also under `--rebuild`),
and `xv`, the window version at the forget (write_vectors.lua refuses vectors encoded from an
earlier window, so a refresh in flight cannot bring the user back). Events after the forget
time start a new window. The update log is not the store's: `services/refresh/forget.py`
publishes the tombstones.

Example::

    forgetter = StoreForgetter(connect("redis://127.0.0.1:6379"))
    res = forgetter.forget(["u1"], at_ms=1_765_000_000_000)
    res.users, res.versions   # (["u1"], [every version the store knows])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import redis

from services.store import layout
from services.store.client import Client
from services.store.memory import MemoryWindows
from services.store.memory_vectors import MemoryVectors
from services.store.records import vector_key
from services.store.router import StoreRouter, raise_first
from services.store.scripts import ScriptCall, Scripts
from services.store.vectors import STATES_KEY

_META_MATCH = "p:{*}:m:*"


@dataclass(slots=True)
class ForgetResult:
    """What a forget or an expiry removed.

    Args:
        users: the users forgotten (an expiry leaves out those it found active).
        windows: windows deleted (users who had one).
        vectors: vector lists deleted (a user under one version; its whole history).
        dirty: dirty marks removed.
        versions: every model version whose vectors were deleted: the update log needs a
            tombstone for each user under each of them.
    """

    users: list[str] = field(default_factory=list)
    windows: int = 0
    vectors: int = 0
    dirty: int = 0
    versions: list[str] = field(default_factory=list)

    def add(self, uid: str, reply: Sequence[int]) -> None:
        """Count one forget.lua reply {forgotten, window, vector lists, dirty}."""
        done, window, vectors, dirty = (int(x) for x in reply)
        if done:
            self.users.append(uid)
            self.windows += window
            self.vectors += vectors
            self.dirty += dirty


class StoreForgetter:
    """`protocols.Forgetter` on a Redis / Valkey node or cluster.

    Args:
        client: from `services.store.client.connect` (stays the caller's; `close` leaves it).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.router = StoreRouter(client)
        self._scripts = Scripts(self.router, "forget.lua")

    def forget(self, user_ids: Sequence[str], at_ms: int) -> ForgetResult:
        """Forget `user_ids` as of `at_ms` (ms since the epoch: events at or before it stay
        refused). Idempotent; a second forget keeps the later time."""
        return self._run(user_ids, at_ms, "")

    def expire(self, user_ids: Sequence[str], before_ms: int) -> ForgetResult:
        """Forget those of `user_ids` whose newest event is older than `before_ms`, each as
        of its newest event (a user who got an event meanwhile is left alone)."""
        return self._run(user_ids, 0, str(before_ms))

    def _run(self, user_ids: Sequence[str], at_ms: int, cutoff: str) -> ForgetResult:
        res = ForgetResult(versions=self.versions())
        uids = list(dict.fromkeys(user_ids))
        calls: list[ScriptCall] = []
        for uid in uids:
            b = layout.bucket(uid)
            keys = [layout.dirty_key(b), *layout.user_keys(uid), layout.rescore_key(b)]
            keys += [vector_key(uid, v) for v in res.versions]
            calls.append((keys, [uid, at_ms, cutoff]))
        for uid, reply in zip(uids, self._scripts.run("forget.lua", calls), strict=True):
            res.add(uid, reply)
        return res

    def versions(self) -> list[str]:
        """Every model version the store knows (`p:{models}:states`)."""
        raw: list[bytes] = self.client.hkeys(STATES_KEY)  # type: ignore[assignment]
        return sorted(v.decode() for v in raw)

    def inactive(self, before_ms: int, count: int = 1000) -> Iterator[list[str]]:
        """Users whose newest event is older than `before_ms`, in chunks of at most `count`
        (SCAN over the meta hashes, node by node; their `t` read pipelined per chunk).
        Forgotten users (no `t`) are not listed."""
        return self._scan_meta(count, "t", lambda t: int(t) < before_ms)

    def pending(self, count: int = 1000) -> Iterator[list[str]]:
        """Forgotten users whose update-log tombstones are still owed (meta `xp`), in chunks
        of at most `count` (SCAN over the meta hashes, as `inactive`)."""
        return self._scan_meta(count, "xp", lambda _: True)

    def _scan_meta(
        self, count: int, field: str, keep: Callable[[bytes], bool]
    ) -> Iterator[list[str]]:
        """SCAN every primary's meta hashes; per chunk of `count`, the users whose `field`
        is set and kept (one pipelined HGET each)."""
        for node in self.router.primaries():
            keys: list[bytes] = []
            for key in node.scan_iter(match=_META_MATCH, count=count):
                keys.append(key)
                if len(keys) >= count:
                    yield _users_where(node, keys, field, keep)
                    keys = []
            if keys:
                yield _users_where(node, keys, field, keep)

    def tombstoned(self, user_ids: Sequence[str]) -> None:
        """The users' tombstones are acknowledged: meta `xp` removed (pipelined per node)."""
        keys = [layout.meta_key(u) for u in dict.fromkeys(user_ids)]
        raise_first(self.router.execute([(k, ("HDEL", k, "xp")) for k in keys]))

    def held(self, user_ids: Sequence[str], versions: Sequence[str]) -> set[tuple[str, str]]:
        """The (user, version) pairs the store holds a vector of (pipelined EXISTS)."""
        pairs = [(u, v) for u in user_ids for v in versions]
        keys = [vector_key(u, v) for u, v in pairs]
        got = self.router.execute([(k, ("EXISTS", k)) for k in keys])
        raise_first(got)
        return {p for p, n in zip(pairs, got, strict=True) if int(n)}

    def close(self) -> None:
        """Stop the router's threads (the client stays open: it is the caller's)."""
        self.router.close()


def _users_where(
    node: redis.Redis, keys: list[bytes], field: str, keep: Callable[[bytes], bool]
) -> list[str]:
    """The user ids of the meta hashes `keys` whose `field` is set and kept (one pipeline)."""
    pipe = node.pipeline(transaction=False)
    for k in keys:
        pipe.hget(k, field)
    return [
        k[k.index(b"}:m:") + 4 :].decode("utf-8")
        for k, v in zip(keys, pipe.execute(), strict=True)
        if v is not None and keep(v)
    ]


class MemoryForgetter:
    """`protocols.Forgetter` on the in-memory stores, by forget.lua's rules."""

    def __init__(self, windows: MemoryWindows, vectors: MemoryVectors) -> None:
        self.windows = windows
        self.vectors = vectors

    def forget(self, user_ids: Sequence[str], at_ms: int) -> ForgetResult:
        return self._run(user_ids, at_ms, None)

    def expire(self, user_ids: Sequence[str], before_ms: int) -> ForgetResult:
        return self._run(user_ids, 0, before_ms)

    def _run(self, user_ids: Sequence[str], at_ms: int, before_ms: int | None) -> ForgetResult:
        res = ForgetResult(versions=self.versions())
        for uid in dict.fromkeys(user_ids):
            done, had, _, dirty = self.windows.forget_user(uid, at_ms, before_ms)
            res.add(uid, (done, had, self.vectors.drop_user(uid) if done else 0, dirty))
        return res

    def inactive(self, before_ms: int, count: int = 1000) -> Iterator[list[str]]:
        return self.windows.inactive(before_ms, count)

    def pending(self, count: int = 1000) -> Iterator[list[str]]:
        return self.windows.owed(count)

    def tombstoned(self, user_ids: Sequence[str]) -> None:
        self.windows.settle(user_ids)

    def versions(self) -> list[str]:
        return sorted(self.vectors.versions())

    def held(self, user_ids: Sequence[str], versions: Sequence[str]) -> set[tuple[str, str]]:
        return {
            (u, v)
            for v in versions
            for u, vs in zip(user_ids, self.vectors.get_batch(user_ids, v), strict=True)
            if vs
        }

    def close(self) -> None:
        pass
