"""The window store: atomic, idempotent window updates and pipelined window reads.

Pure Python decides nothing here that the Lua scripts do not re-check on the server: the
scripts hold the rules (replay skip, dedup, trim) so that two consumers racing on one user
after a rebalance still leave the window as one consumer would. `reference.py` is the plain
Python model of the same rules, held to the scripts by a parity test.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contract.events import Event
from contract.record import unpack_record
from services.common.log_limit import LogLimit
from services.config import WindowConfig
from services.store import layout
from services.store.client import Client
from services.store.router import StoreRouter, raise_first
from services.store.scripts import ScriptCall, Scripts, node_chunks

log = logging.getLogger(__name__)

_META_MATCH = "p:{*}:m:*"  # every user with a window has a meta hash


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
    # per event in `blob`'s order, its short-term rows for the versions of the call's
    # `layout.StateSpec`, one after the other (float32); empty: no state for this user
    rows: bytes = b""


@dataclass(slots=True)
class ApplyResult:
    applied: int = 0
    duplicate: int = 0
    replayed: int = 0
    trimmed: int = 0
    forgotten: int = 0  # events at or before their user's forget time (LAYOUT.md): refused
    window_lengths: list[int] = field(default_factory=list)

    def add(self, other: ApplyResult) -> None:
        self.applied += other.applied
        self.duplicate += other.duplicate
        self.replayed += other.replayed
        self.trimmed += other.trimmed
        self.forgotten += other.forgotten
        self.window_lengths += other.window_lengths


@dataclass(frozen=True, slots=True)
class Window:
    user_id: str
    version: int
    events: list[Event]  # oldest first
    undecodable: int = 0  # records left out: a layout this code does not read, or corrupt


class WindowStore:
    """Windows in a Redis / Valkey node or cluster, laid out as in LAYOUT.md: the ingest
    side writes them (`apply_packed`), the refresh side reads them (`read`) and the dirty
    marks the writes leave (`oldest_dirty`, `dirty_count`, `users`).

    Args:
        client: from `services.store.client.connect` (stays the caller's; `close` leaves it).
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
        self.router = StoreRouter(client)
        self._scripts = Scripts(self.router, "apply.lua", "read.lua")

    def apply_packed(
        self, updates: Iterable[PackedUpdate], rebuild: bool = False,
        states: layout.StateSpec | None = None,
    ) -> ApplyResult:  # fmt: skip
        """Apply updates atomically per user; idempotent under replay of the same offsets.

        Args:
            rebuild: ignore the stored offsets and rely on event-id dedup alone. For re-reading
                a topic after a shard lost its data: the window is the newest `max_events`
                distinct events within the horizon of everything ever applied, so applying
                already-seen events again changes nothing, and lost ones come back.

            states: the versions whose short-term state the updates' `rows` feed (LAYOUT.md
                "Short-term state"): an entry per added event (not for replays, duplicates,
                refused events), in the same atomic step as the window.

        Either way, a forgotten user's events at or before the forget time are refused
        (`ApplyResult.forgotten`; LAYOUT.md "Forgetting a user").
        """
        ups = list(updates)
        buckets = [layout.bucket(u.user_id) for u in ups]
        head: list[Any] = [self.cfg.max_events, self.cfg.horizon_ms, int(rebuild),
                           *(states or layout.StateSpec(())).args()]  # fmt: skip
        calls: list[ScriptCall] = []
        slots = [layout.BUCKET_SLOTS[b] for b in buckets]
        for chunk in node_chunks(self.router, slots, self.users_per_call):
            args = list(head)
            for i in chunk:
                u = ups[i]
                args += [buckets[i], u.user_id, u.source, u.blob, u.rows if states else b""]
            calls.append(([layout.dirty_key(buckets[chunk[0]])], args))
        total = ApplyResult()
        for r in self._scripts.run("apply.lua", calls):
            a, d, rp, t, f = (int(x) for x in r[:5])
            total.add(ApplyResult(a, d, rp, t, f, [int(x) for x in r[5:]]))
        return total

    def read(self, user_ids: Sequence[str], newest: int | None = None) -> list[Window]:
        """Windows of `user_ids`, in request order; an unknown user has an empty window.
        `newest`: only each window's newest `newest` events (the version is the window's)."""
        arg = [] if newest is None else [max(1, newest)]
        calls: list[ScriptCall] = [(layout.user_keys(uid), arg) for uid in user_ids]
        out = []
        for uid, r in zip(user_ids, self._scripts.run("read.lua", calls), strict=True):
            events, bad = decode_records(uid, r)
            out.append(Window(uid, int(r[0]), events, bad))
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

    # ----- the dirty marks and the users (the refresh side) ------------------------------

    def dirty_count(self, buckets: Collection[int] | None = None) -> int:
        """Users marked dirty across `buckets` (None: all; one ZCARD per bucket, pipelined
        per node)."""
        keys = [layout.dirty_key(b) for b in _buckets(buckets)]
        results = self.router.execute([(k, ("ZCARD", k)) for k in keys])
        raise_first(results)
        return sum(int(n) for n in results)

    def oldest_dirty(
        self, per_bucket: int, buckets: Collection[int] | None = None
    ) -> list[tuple[str, int]]:
        """Up to `per_bucket` oldest dirty users of every bucket in `buckets` (None: all), as
        (user id, dirty ts_ms), sorted oldest first. One pipelined read per node."""
        keys = [layout.dirty_key(b) for b in _buckets(buckets)]
        results = self.router.execute(
            [(k, ("ZRANGE", k, 0, per_bucket - 1, "WITHSCORES")) for k in keys]
        )
        raise_first(results)
        out = [(m.decode("utf-8"), int(s)) for r in results for m, s in layout.zpairs(r)]
        out.sort(key=lambda p: (p[1], p[0]))
        return out

    def users(self, count: int = 1000) -> Iterator[str]:
        """User ids of every window in the store, by SCAN (each node of a cluster in turn).
        SCAN returns every key present for the whole scan, some maybe twice."""
        for node in self.router.primaries():
            for key in node.scan_iter(match=_META_MATCH, count=count):
                # p:{B}:m:<uid>: the tag holds only digits, so the first "}:m:" ends it
                yield key[key.index(b"}:m:") + 4 :].decode("utf-8")

    def close(self) -> None:
        """Stop the router's threads (the client stays open: it is the caller's)."""
        self.router.close()


def _buckets(buckets: Collection[int] | None) -> Iterable[int]:
    return range(layout.BUCKETS) if buckets is None else sorted(buckets)


def decode_records(user_id: str, reply: Sequence[Any]) -> tuple[list[Event], int]:
    """The events of a script reply ``[head, id1, record1, id2, record2, ...]`` (read.lua,
    read_recent.lua) and how many records were left out: one this code cannot read must
    not fail every read of the user (the refresher's, serving's) for good."""
    events, bad = [], 0
    for j in range(1, len(reply), 2):
        try:
            events.append(unpack_record(user_id, reply[j].decode("utf-8"), reply[j + 1]))
        except ValueError as exc:  # a newer layout (a rolling upgrade) or a corrupt record:
            bad += 1  # left out, counted (`Window.undecodable`), logged once a minute
            if (held := _UNDECODABLE_LOG("undecodable")) is not None:
                log.warning("window record of user %r left out: %s%s", user_id[:64], exc,
                            LogLimit.more(held))  # fmt: skip
    return events, bad


_UNDECODABLE_LOG = LogLimit(60.0)
