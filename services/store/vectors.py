"""The vector store: versioned user vectors with history, and the active-version pointer.

Laid out as in LAYOUT.md ("Vectors and model versions"): `p:{B}:v:<ver>:<uid>` lists, newest
first, of 24-byte-header binary records (`records`: the format, keys, batch encode/decode);
`p:{models}:*` keys for the pointer and the states. Batched writes and `get_batch` go
through `router.StoreRouter.execute` (one pipeline per node, on threads); the serving read
(`read_batch`) through `StoreRouter.read_packed` on the calling thread.

Example::

    store = VectorStore(connect("redis://127.0.0.1:6379"))
    store.put_batch([StoredVector("u1", "v1", np.ones(4, np.float32), 1_700_000_000_000, 3, 7)])
    store.set_active("v1")
    [[latest]] = store.get_batch(["u1"], store.active_version() or "v1")
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import numpy as np
from redis.exceptions import ResponseError

from contract.versions import check_version
from services.store import audience, deltas, layout, recent
from services.store.client import Client
from services.store.recent import Recent
from services.store.records import (
    Dtype,
    StoredVector,
    VectorBatch,
    decode_batch,
    pack_vector,
    packed_lranges,
    unpack_vector,
    vector_key,
)
from services.store.router import StoreRouter, raise_first
from services.store.scripts import ScriptCall, Scripts

_pack: Any = hiredis.pack_command  # (its stub types the tuple as one element)
STATES = ("backfilling", "ready", "active", "retired")
ACTIVE_KEY = b"p:{models}:active"
STATES_KEY = b"p:{models}:states"
HISTORY_KEY = b"p:{models}:history"
REGISTRY_SEEN_KEY = b"p:{models}:registry_seen"


def scores_key(version: str) -> bytes:
    """`p:{models}:scores:<ver>`: what the version's score columns are (LAYOUT.md)."""
    return b"p:{models}:scores:" + check_version(version).encode()


def backfill_key(version: str) -> bytes:
    """The set of buckets whose back-fill of `version` is done (LAYOUT.md)."""
    return b"p:{models}:backfill:" + check_version(version).encode()


class CutoverError(RuntimeError):
    """A version flip the store refused (unknown, retired or not ready version)."""


@dataclass(frozen=True, slots=True)
class UserWrite:
    """Vectors of one user (at most one per version); `expect_window_version` set: clear the
    user's dirty mark if the meta `v` still equals it (the refresher's write);
    `rescore_at_ms` set: when the user is due to be encoded again without new events
    (`layout.NO_RESCORE`: never; None: leave the schedule as it is)."""

    user_id: str
    vectors: Sequence[StoredVector]
    expect_window_version: int | None = None
    rescore_at_ms: int | None = None


@dataclass(slots=True)
class WriteResult:
    written: int = 0  # vectors pushed or replacing a head of the same window version
    cleared: int = 0  # dirty marks removed
    still_dirty: int = 0  # users changed while being encoded (mark kept)
    replaced_computed_at_ms: list[int] = field(default_factory=list)  # heads written over
    # (user, version) of vectors refused because they were encoded from a window the user
    # asked to forget (LAYOUT.md "Forgetting a user"): the refresher tombstones them
    forgotten: list[tuple[str, str]] = field(default_factory=list)
    # (user, version) of the skipped ones: their vectors are in the update log already (the
    # log is written first), after the newer head: the refresher publishes the head again
    stale: list[tuple[str, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Vectors older than the stored head (not written)."""
        return len(self.stale)


class VectorStore:
    """Versioned vectors in a Redis / Valkey node or cluster.

    Args:
        client: from `services.store.client.connect` (stays the caller's; `close` leaves it).
        history: vectors kept per user and version (the oldest drops off).
        ttl_s: expire a user's vectors this long after their last write (None: never).
        dtype: value encoding of new writes; reads accept both.
    """

    def __init__(
        self, client: Client, history: int = 4, ttl_s: int | None = None, dtype: Dtype = "float32"
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.client = client
        self.history = history
        self.ttl_s = ttl_s
        self.dtype: Dtype = dtype
        self.router = StoreRouter(client)
        self._scripts = Scripts(
            self.router, "write_vectors.lua", "set_active.lua", "read_recent.lua", "write_delta.lua"
        )
        # version -> its audience mask (write_vectors.lua), from `set_score_columns`; a
        # version this store was not told about keeps every column in its audience sets
        self._masks: dict[str, str] = {}

    # ----- the active pointer and version states ---------------------------------------

    def active_version(self) -> str | None:
        raw = self.client.get(ACTIVE_KEY)
        return raw.decode() if isinstance(raw, bytes) and raw else None

    def versions(self) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.client.hgetall(STATES_KEY)  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}

    def set_state(self, version: str, state: str) -> None:
        """Record a version's state (not "active": that is `set_active`)."""
        if state not in STATES or state == "active":
            raise ValueError(f"state must be one of backfilling/ready/retired, got {state!r}")
        if state == "retired" and self.active_version() == version:
            raise CutoverError(f"{version} is active; promote another version first")
        self.client.hset(STATES_KEY, check_version(version), state)

    def set_active(self, version: str, require: str = "") -> str | None:
        """Make `version` active in one atomic step; the old one becomes "ready" and goes on
        the history. `require`: refuse unless the version is in this state (e.g. "ready").
        Returns the previous active version."""
        return self._flip(check_version(version), "push", require)

    def rollback(self) -> tuple[str | None, str]:
        """Re-activate the version active before the current one. Returns (from, to)."""
        raw = self.client.lindex(HISTORY_KEY, 0)
        if not isinstance(raw, bytes):
            raise CutoverError("no earlier active version to roll back to")
        target = raw.decode()
        return self._flip(target, "pop", ""), target

    def _flip(self, version: str, mode: str, require: str) -> str | None:
        keys = [ACTIVE_KEY, STATES_KEY, HISTORY_KEY]
        try:
            (old,) = self._scripts.run("set_active.lua", [(keys, [version, mode, require])])
        except ResponseError as exc:
            if str(exc).startswith("CUTOVER"):
                raise CutoverError(str(exc)[len("CUTOVER ") :]) from exc
            raise
        return (old.decode() or None) if isinstance(old, bytes) else None

    def history_versions(self) -> list[str]:
        raw: list[bytes] = self.client.lrange(HISTORY_KEY, 0, -1)  # type: ignore[assignment]
        return [r.decode() for r in raw]

    def registry_seen(self) -> str | None:
        raw = self.client.get(REGISTRY_SEEN_KEY)
        return raw.decode() if isinstance(raw, bytes) and raw else None

    def set_registry_seen(self, version: str) -> None:
        self.client.set(REGISTRY_SEEN_KEY, version)

    def set_score_columns(self, version: str, columns_json: str) -> None:
        """Record what column i of the version's scores is (JSON, `OutcomeHeads.columns_json`;
        the same value on every call: a version never changes)."""
        self.client.set(scores_key(version), columns_json)
        cols = json.loads(columns_json)["columns"]
        self._masks[version] = "".join("1" if c.get("audience", True) else "0" for c in cols)

    def score_columns(self, version: str) -> str | None:
        """The version's score columns as recorded (None: the version stores no scores)."""
        raw = self.client.get(scores_key(version))
        return raw.decode() if isinstance(raw, bytes) and raw else None

    def backfilled(self, version: str) -> set[int]:
        """The buckets whose back-fill of `version` is done (by any refresher)."""
        raw: set[bytes] = self.client.smembers(backfill_key(version))  # type: ignore[assignment]
        return {int(b) for b in raw}

    def mark_backfilled(self, version: str, buckets: Iterable[int]) -> None:
        if bs := list(buckets):
            self.client.sadd(backfill_key(version), *bs)

    def reset_backfill(self, version: str) -> None:
        self.client.delete(backfill_key(version))

    # ----- vectors -----------------------------------------------------------------------

    def put_batch(self, vectors: Sequence[StoredVector]) -> None:
        """Write vectors: each becomes its user's newest under its version, atomically per
        user (history trimmed, TTL renewed). A vector older (by window version) than the
        stored newest is skipped; one of the same window version replaces it."""
        pending = list(vectors)
        while pending:  # a (user, version) twice in one call: later ones in a later round
            seen: set[tuple[str, str]] = set()
            now: dict[str, list[StoredVector]] = defaultdict(list)
            later: list[StoredVector] = []
            for v in pending:
                key = (v.user_id, v.model_version)
                (later if key in seen else now[v.user_id]).append(v)
                seen.add(key)
            self.write([UserWrite(uid, vs) for uid, vs in now.items()])
            pending = later

    def write(self, users: Sequence[UserWrite]) -> WriteResult:
        """The refresher's write: vectors (any versions) and conditional dirty clears,
        one atomic script call per bucket."""
        by_bucket: dict[int, list[UserWrite]] = defaultdict(list)
        for u in users:
            by_bucket[layout.bucket(u.user_id)].append(u)
        ttl_ms = int(self.ttl_s * 1000) if self.ttl_s else 0
        calls: list[ScriptCall] = []
        planned: list[tuple[list[UserWrite], list[str]]] = []
        for b, group in by_bucket.items():
            vers = sorted({check_version(v.model_version) for u in group for v in u.vectors})
            keys: list[bytes] = [layout.dirty_key(b), layout.rescore_key(b)]
            args: list[Any] = [self.history, ttl_ms, len(vers)]
            args += [self._masks.get(ver, "") for ver in vers]
            for u in group:
                by_ver = {v.model_version: v for v in u.vectors}
                keys.append(layout.meta_key(u.user_id))
                keys += [vector_key(u.user_id, ver) for ver in vers]
                expect = "" if u.expect_window_version is None else str(u.expect_window_version)
                due = "" if u.rescore_at_ms is None else str(u.rescore_at_ms)
                args += [u.user_id, expect, due]
                args += [
                    pack_vector(by_ver[ver], self.dtype) if ver in by_ver else b"" for ver in vers
                ]
            calls.append((keys, args))
            planned.append((group, vers))
        res = WriteResult()
        for r, (group, vers) in zip(
            self._scripts.run("write_vectors.lua", calls), planned, strict=True
        ):
            codes = [int(x) for x in r]
            n = len(vers)
            for u, i in zip(group, range(0, len(codes), n + 1), strict=True):
                cleared = codes[i]
                res.cleared += cleared == 1
                res.still_dirty += cleared == 0
                for ver, c in zip(vers, codes[i + 1 : i + 1 + n], strict=True):
                    if c == -2:
                        res.stale.append((u.user_id, ver))
                    res.written += c >= -1
                    if c >= 0:
                        res.replaced_computed_at_ms.append(c)
                    elif c == -4:
                        res.forgotten.append((u.user_id, ver))
        return res

    def due_rescores(
        self, per_bucket: int, now_ms: int, buckets: Collection[int] | None = None
    ) -> list[str]:
        """Up to `per_bucket` users of every bucket in `buckets` (None: all) whose rescore
        time is at or before `now_ms`, longest due first. One pipelined read per node."""
        owned = range(layout.BUCKETS) if buckets is None else sorted(buckets)
        keys = [layout.rescore_key(b) for b in owned]
        results = self.router.execute(
            [(k, ("ZRANGE", k, "-inf", now_ms, "BYSCORE", "LIMIT", 0, per_bucket, "WITHSCORES"))
             for k in keys]
        )  # fmt: skip
        raise_first(results)
        pairs = [(float(s), m.decode("utf-8")) for r in results for m, s in layout.zpairs(r)]
        return [uid for _, uid in sorted(pairs)]

    def get_batch(
        self, user_ids: Sequence[str], version: str, history: int = 1
    ) -> list[list[StoredVector]]:
        """Per requested id, in request order, its vectors under `version`, newest first
        (at most `history`); [] when not found. One pipelined read per shard."""
        check_version(version)
        n = max(1, history)
        calls = [(k, ("LRANGE", k, 0, n - 1)) for k in (vector_key(u, version) for u in user_ids)]
        results = self.router.execute(calls)
        raise_first(results)
        return [
            [unpack_vector(uid, version, rec) for rec in recs]
            for uid, recs in zip(user_ids, results, strict=True)
        ]

    def read_raw(
        self, user_ids: Sequence[str], version: str, history: int, deadline: float
    ) -> list[Any]:
        """The LRANGE replies (raw record bytes, newest first) of `user_ids`, one pipelined
        write per shard then the replies, all on this thread, bounded by `deadline`
        (`time.monotonic()`; `router.DeadlineReached` when it passes)."""
        slots, cmds = packed_lranges(user_ids, version, max(1, history) - 1)
        results = self.router.read_packed(slots, cmds, deadline)
        raise_first(results)
        return results

    def read_batch(
        self, user_ids: Sequence[str], version: str, history: int, deadline: float
    ) -> VectorBatch:
        """`get_batch` decoded into arrays (VectorBatch), read with `read_raw`: the serving
        path. Same values as `get_batch` (tests/serving/test_read_batch.py holds them
        together)."""
        return decode_batch(self.read_raw(user_ids, version, history, deadline), history)

    def read_recent(
        self, user_ids: Sequence[str], version: str, history: int, max_events: int,
        deadline: float, row_dim: int = 0, users_per_call: int = 128, use_deltas: bool = True,
    ) -> tuple[VectorBatch, Recent]:  # fmt: skip
        """`read_batch`, and per user what its newest vector has not folded in: the window
        events after the layout-3 marker (window order, at most `max_events` of the newest,
        oldest first; none without a marker), or, with `row_dim` (the head's row length H),
        the delta ingest stored when it covers them, else their rows from the short-term
        state when it accounts for them (`recent.Recent`). First the plain LRANGEs with each
        user's window version (meta `v`) and, with `row_dim`, its delta (meta `d<ver>`; or
        with `use_deltas` False its state, meta `s<ver>`) in the same pipelined round trip;
        the states of the users whose delta does not answer in a second one; then
        `read_recent.lua` only for the users whose window changed since their newest vector
        and whose state does not account for it (LAYOUT.md "Vector value, layout 3",
        "Short-term state", "Short-term delta"; `services/store/recent.py`)."""
        return recent.read_recent(self.router, self._scripts, user_ids, version, history,
                                  max_events, deadline, users_per_call, row_dim,
                                  use_deltas)  # fmt: skip

    def write_deltas(
        self, version: str, user_ids: Sequence[str], covered: np.ndarray, values: list[bytes]
    ) -> int:
        """Store the short-term deltas ingest computed (`deltas.pack_deltas`) as the users'
        meta `d<version>`, each only where meta `v` still equals `covered` (LAYOUT.md
        "Short-term delta"); the number written."""
        return deltas.write_deltas(self.router, self._scripts, check_version(version),
                                   user_ids, covered, values)  # fmt: skip

    # ----- audiences (audience.py) -------------------------------------------------------

    def audience_counts(
        self, version: str, column: int, min_score: float, max_score: float = audience.INF
    ) -> np.ndarray:
        """(BUCKETS,) members of each bucket's audience set with a score in the range."""
        return audience.counts(self.router, version, column, min_score, max_score)

    def audience_members(
        self, version: str, column: int, min_score: float, spans: Sequence[audience.Span],
        max_score: float = audience.INF,
    ) -> list[tuple[list[str], list[float]]]:  # fmt: skip
        return audience.members(self.router, version, column, min_score, spans, max_score)

    def audience_threshold(self, version: str, column: int, n: int) -> float:
        return audience.threshold_for_top(self.router, version, column, n)

    def close(self) -> None:
        """Stop the router's threads and close the connections `read_raw` keeps (the client
        stays open: it is the caller's)."""
        self.router.close()
