"""The window store: atomic, idempotent window updates and pipelined window reads.

Pure Python decides nothing here that the Lua scripts do not re-check on the server: the
scripts hold the rules (replay skip, dedup, trim) so that two consumers racing on one user
after a rebalance still leave the window as one consumer would. `reference.py` is the plain
Python model of the same rules, held to the scripts by a parity test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from contract.events import Event
from contract.record import unpack_record
from services.config import WindowConfig
from services.store import layout, sharded
from services.store.client import Client


def _script(name: str) -> str:
    return resources.files("services.store").joinpath(name).read_text()


def source_label(partition: int, topic_id: str | None) -> str:
    """The name under which a user's applied offset of one partition is kept.

    Offsets are only comparable within one incarnation of a topic: a topic deleted and
    created again (or a broker that lost its data) restarts at offset 0, and offsets kept
    from before would make the store skip every new record as a replay. With the topic id
    (Kafka >= 2.8 and Tansu report one) in the label, a new incarnation starts fresh, while
    event-id dedup still refuses events that were applied before.
    """
    return f"{partition}@{topic_id}" if topic_id else str(partition)


@dataclass(frozen=True, slots=True)
class PackedUpdate:
    """Events of one user from one partition, in offset order, packed for apply.lua
    (`layout.pack_update` per event). `source` names the partition's incarnation, see
    `source_label`."""

    user_id: str
    source: str | int
    blob: bytes


@dataclass(slots=True)
class ApplyResult:
    applied: int = 0
    duplicate: int = 0
    replayed: int = 0
    trimmed: int = 0
    window_lengths: list[int] = field(default_factory=list)

    def add(self, other: ApplyResult) -> None:
        self.applied += other.applied
        self.duplicate += other.duplicate
        self.replayed += other.replayed
        self.trimmed += other.trimmed
        self.window_lengths += other.window_lengths


@dataclass(frozen=True, slots=True)
class Window:
    user_id: str
    version: int
    events: list[Event]  # oldest first


class WindowStore:
    """Windows in a Redis / Valkey node or cluster, laid out as in LAYOUT.md.

    Args:
        client: from `services.store.client.connect`.
        cfg: window bounds (max events, horizon).
        users_per_call: users per apply script call. One call per node and chunk instead of
            one per bucket cuts the client's per-call work ~50x; the chunk bounds how long
            one call holds its Valkey node (~1 ms per 100 users on the test machine), which
            readers on that node wait out.
    """

    def __init__(self, client: Client, cfg: WindowConfig, users_per_call: int = 128) -> None:
        self.client = client
        self.cfg = cfg
        self.users_per_call = users_per_call
        self._apply_src = _script("apply.lua")
        self._read_src = _script("read.lua")
        self._load_scripts()

    def _load_scripts(self) -> None:
        # On a cluster SCRIPT LOAD goes to every primary; the SHA is the same everywhere.
        self._apply_sha = self.client.script_load(self._apply_src)
        self._read_sha = self.client.script_load(self._read_src)

    def _run(self, sha_name: str, calls: list[tuple[list[bytes], list[Any]]]) -> list[Any]:
        """EVALSHA each (keys, args) in one pipeline (per shard on a cluster); reload on NOSCRIPT.

        Raises the first store error (connection, timeout, script error) after the pipeline.
        """
        for attempt in (0, 1):
            sha = getattr(self, sha_name)
            results = sharded.execute(
                self.client,
                [(keys[0], ("EVALSHA", sha, len(keys), *keys, *args)) for keys, args in calls],
            )
            noscript = any(isinstance(r, NoScriptError) for r in results)
            if noscript and attempt == 0:
                # A node restarted and lost its script cache: reload and redo the whole
                # batch (the scripts are idempotent, so calls that did run change nothing).
                self._load_scripts()
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return list(results)
        raise ResponseError("NOSCRIPT after reload")  # pragma: no cover

    def apply_packed(self, updates: Iterable[PackedUpdate], rebuild: bool = False) -> ApplyResult:
        """Apply updates atomically per user; idempotent under replay of the same offsets.

        Args:
            rebuild: ignore the stored offsets and rely on event-id dedup alone. For re-reading
                a topic after a shard lost its data: the window is the newest `max_events`
                distinct events within the horizon of everything ever applied, so applying
                already-seen events again changes nothing, and lost ones come back.
        """
        ups = list(updates)
        buckets = [layout.bucket(u.user_id) for u in ups]
        head: list[Any] = [self.cfg.max_events, self.cfg.horizon_ms, int(rebuild)]
        calls: list[tuple[list[bytes], list[Any]]] = []
        slots = [layout.BUCKET_SLOTS[b] for b in buckets]
        for group in sharded.node_groups(self.client, slots):
            for lo in range(0, len(group), self.users_per_call):
                chunk = group[lo : lo + self.users_per_call]
                args = list(head)
                for i in chunk:
                    u = ups[i]
                    args += [buckets[i], u.user_id, u.source, u.blob]
                calls.append(([layout.dirty_key(buckets[chunk[0]])], args))
        total = ApplyResult()
        for r in self._run("_apply_sha", calls):
            total.add(
                ApplyResult(int(r[0]), int(r[1]), int(r[2]), int(r[3]), [int(x) for x in r[4:]])
            )
        return total

    def read(self, user_ids: Sequence[str]) -> list[Window]:
        """Windows of `user_ids`, in request order; an unknown user has an empty window."""
        calls: list[tuple[list[bytes], list[Any]]] = [
            (list(layout.user_keys(uid)), []) for uid in user_ids
        ]
        out = []
        for uid, r in zip(user_ids, self._run("_read_sha", calls), strict=True):
            events = [
                unpack_record(uid, r[j].decode("utf-8"), r[j + 1]) for j in range(1, len(r), 2)
            ]
            out.append(Window(uid, int(r[0]), events))
        return out

    def offsets(self, user_id: str, topic_id: str | None = None) -> Mapping[int, int]:
        """Last applied offset per partition for one user (for operators and tests), for the
        topic incarnation `topic_id` (None: offsets stored without a topic id)."""
        raw: dict[bytes, bytes] = self.client.hgetall(layout.meta_key(user_id))  # type: ignore[assignment]
        out = {}
        for k, v in raw.items():
            if k.startswith(b"o"):
                part, _, tid = k[1:].decode().partition("@")
                if (tid or None) == topic_id:
                    out[int(part)] = int(v)
        return out

    def dirty_count(self) -> int:
        return dirty_count(self.client)


def dirty_count(client: Client) -> int:
    """Users marked dirty across all buckets (one ZCARD per bucket, pipelined per shard)."""
    keys = [layout.dirty_key(b) for b in range(layout.BUCKETS)]
    results = sharded.execute(client, [(k, ("ZCARD", k)) for k in keys])
    for r in results:
        if isinstance(r, Exception):
            raise r
    return sum(int(n) for n in results)
