"""The refresher: dirty users, oldest first, re-encoded with every live model version.

A pass runs rounds until no user is dirty. A round reads the oldest dirty users of every
bucket (one pipelined read per shard), sorts them by dirty time and cuts them into
batches. For each batch the main thread reads the windows (pipelined) and encodes them with
every version in the write set (active, back-filling, ready); a writer thread commits the
batch before (publish, then store) while the next one is encoded. Between passes the loop
waits for `interval_s`, or less when the backlog passes `drain_threshold`, and works on a
pending back-fill in chunks (see `cutover.py`); every `expire_every_s` it forgets the users
inactive for `expire_after_days`, when set (see `forget.py`). After the dirty users, a pass
encodes again the users whose rescore time has come (idle users: `Refresher.rescore`).

Several refreshers divide the work when they share a group (`share.py`): each scans, encodes
and back-fills only the buckets its share holds now, and claims each batch from the share,
which drops the users of buckets revoked since the round's scan. Alone it takes every bucket.

Shutdown: `stop` is a flag; the loop finishes its batch, waits for the writer, and closes
the publisher in `finally`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from services.refresh.config import RefreshConfig
from services.refresh.cutover import Cutover
from services.refresh.drift import Drift, Previous
from services.refresh.encoders import EncoderCache, encode_windows
from services.refresh.forget import expire_inactive
from services.refresh.metrics import RefreshMetrics, RefreshStats, account_batch, error_kind
from services.refresh.publish import Publisher, republish_heads
from services.refresh.share import AllBuckets
from services.store.layout import NO_RESCORE
from services.store.protocols import Forgetter, Vectors, Windows
from services.store.records import StoredVector
from services.store.vectors import UserWrite, WriteResult
from services.store.windows import Window
from services.telemetry import kafka_headers

log = logging.getLogger(__name__)

WRITTEN_STATES = ("active", "backfilling", "ready")


def now_ms() -> int:
    return time.time_ns() // 1_000_000  # a timestamp (computed_at), not a duration


@dataclass
class Prepared:
    """One encoded batch, ready to commit."""

    writes: list[UserWrite]
    vectors: list[StoredVector]
    dirty_ts: list[int] = field(default_factory=list)
    started: float = 0.0
    span: Any = None  # the batch's trace span (None: traces off), ended by `commit`
    previous: Previous | None = None  # the users' vectors before (drift.py)


class Refresher:
    def __init__(
        self,
        cfg: RefreshConfig,
        windows: Windows,
        vectors: Vectors,
        publisher: Publisher,
        encoders: EncoderCache,
        metrics: RefreshMetrics | None = None,
        tracer: trace.Tracer | None = None,
        forgetter: Forgetter | None = None,
        share: AllBuckets | None = None,
    ) -> None:
        """`tracer`: one span per batch, from its encode to its store write, whose context
        goes to the update log in each record's headers (None: no spans). `forgetter`: the
        store's, for the expiry (None: no expiry whatever the config says). `share`: the
        buckets to work on (a started `share.GroupShare`; None: all, `AllBuckets`)."""
        self.share = share or AllBuckets()
        self.forgetter = forgetter
        self.tracer = tracer
        self.cfg = cfg
        self.windows = windows
        self.vectors = vectors
        self.publisher = publisher
        self.encoders = encoders
        self.metrics = metrics
        self.stats = RefreshStats()
        self.drift = (  # drift.py: one more read per batch
            Drift(vectors, metrics, encoders.models_dir) if metrics and cfg.drift else None
        )
        self._described: set[str] = set()  # versions whose score columns are recorded
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh-commit")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh-read")

    # ----- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event, until_idle: bool = False) -> RefreshStats:
        """Refresh until `stop` is set (or, with `until_idle`, until no user is dirty and no
        back-fill is pending). Store or broker errors are logged and retried after a pause;
        the dirty marks keep the work."""
        cutover = Cutover(
            self.cfg, self.vectors, self.windows, self.encoders.models_dir,
            self.encode_and_commit, self.stats, self.metrics, self.share,
            lambda ver: self.encoders.reads([ver]),
            self.loads,
        )  # fmt: skip
        last_pass = last_expiry = -float("inf")
        errors = 0
        try:
            while not stop.is_set():
                try:
                    cutover.sync()
                    due = time.monotonic() - last_pass >= self.cfg.interval_s
                    backlog = self.backlog()
                    if due or backlog >= self.cfg.drain_threshold or until_idle:
                        last_pass = time.monotonic()
                        self.drain(stop)
                    busy = cutover.step(stop)
                    if time.monotonic() - last_expiry >= self.cfg.expire_every_s:
                        last_expiry = time.monotonic()
                        self.expire()
                    errors = 0
                except Exception as exc:
                    errors += 1
                    self.stats.error(self.metrics, error_kind(exc))
                    log.exception("refresh failed (%d in a row); retrying", errors)
                    if until_idle and errors >= 5:
                        raise
                    stop.wait(min(30.0, 0.5 * 2**errors))
                    continue
                if until_idle and not busy and self.idle():
                    break
                if not busy:
                    stop.wait(self.cfg.check_every_s)
        finally:
            self.close()
        return self.stats

    def expire(self) -> int:
        """Forget the users without events for `expire_after_days` (store, then update-log
        tombstones), after the tombstones still owed; returns how many. Only the owed ones
        when the expiry is off; nothing in a share without bucket 0 (one member runs it)."""
        days, owned = self.cfg.expire_after_days, self.share.owned()
        if self.forgetter is None or (owned is not None and 0 not in owned):
            return 0
        n = len(expire_inactive(self.forgetter, self.publisher, now_ms(), days).users)
        self.stats.expired += n
        if self.metrics:
            self.metrics.users_expired.inc(n)
        return n

    def backlog(self) -> int:
        """Dirty users in this refresher's buckets."""
        n = self.windows.dirty_count(self.share.owned())
        if self.metrics:
            self.metrics.dirty_users.set(n)
        return n

    def idle(self) -> bool:
        """Nothing left to do (`run(until_idle=True)` ends): no user dirty; with a share,
        in no bucket (another member's share may move here) and no back-fill pending (one
        whose version does not load waits for a fix, not for us)."""
        n = self.backlog()
        if n or self.share.owned() is None:
            return n == 0
        states = [s for v, s in self.vectors.versions().items() if v not in self.encoders.failed]
        return self.windows.dirty_count() == 0 and "backfilling" not in states

    def write_set(self) -> list[str]:
        """Versions every refreshed user is encoded with: active, back-filling, ready. A
        back-filling or ready version that cannot be loaded (its files corrupt or gone) is
        left out, counted and logged, and tried again after a minute: it must not stop the
        active version's refresh. The active one failing raises (nothing to write with)."""
        states = self.vectors.versions()
        live = sorted(v for v, s in states.items() if s in WRITTEN_STATES)
        self.encoders.keep(set(live))
        return [v for v in live if states[v] == "active" or self.loads(v)]

    def loads(self, version: str) -> bool:
        """`EncoderCache.loads`, a failure counted as a model error."""
        return self.encoders.loads(version, lambda: self.stats.error(self.metrics, "model"))

    def drain(self, stop: threading.Event) -> int:
        """Rounds until no user is dirty (or stop). Returns users refreshed."""
        t0, done = time.perf_counter(), 0
        self.stats.passes += 1
        while not stop.is_set():
            cands = self.windows.oldest_dirty(self.cfg.candidates_per_bucket, self.share.owned())
            if not cands:
                break
            done += self.round(cands, self.write_set(), stop)
        done += self.rescore(stop)
        self.stats.passes_done += 1
        if self.metrics and done:
            self.metrics.users_per_second.set(done / max(time.perf_counter() - t0, 1e-9))
        return done

    def rescore(self, stop: threading.Event) -> int:
        """Rounds over the users due to be encoded again without new events (their rescore
        time, `RefreshConfig.rescore_after_s`, has come): their windows are encoded at the
        present time, so the vectors and outcome scores of idle users follow their idleness.
        Each write sets the next time or ends the schedule. Returns users encoded."""
        done = 0
        while self.cfg.rescore_after_s is not None and not stop.is_set():
            due = self.vectors.due_rescores(
                self.cfg.candidates_per_bucket, now_ms(), self.share.owned()
            )
            n = self.round([(u, 0) for u in due], self.write_set(), stop, rescore=True)
            done += n
            if not n:
                break
        self.stats.rescored += done
        if self.metrics and done:
            self.metrics.users_rescored.inc(done)
        return done

    def round(
        self,
        cands: Sequence[tuple[str, int]],
        versions: Sequence[str],
        stop: threading.Event,
        rescore: bool = False,
    ) -> int:
        """Encode `cands` (user, dirty ts) in batches. Three stages overlap: batch k+1's
        windows are read and batch k-1 is committed while batch k is encoded. `rescore`:
        the users are due to be encoded again, not dirty (no event-to-vector time)."""
        if not versions:
            raise RuntimeError("no active model version in the store; see `persona cutover`")
        pending: Future[WriteResult] | None = None
        chunks = [
            cands[i : i + self.cfg.batch_size] for i in range(0, len(cands), self.cfg.batch_size)
        ]
        first = [u for u, _ in chunks[0]] if chunks else []
        newest = self.encoders.reads(versions)
        reads = [self._reader.submit(self._read, first, versions, newest)] if chunks else []
        n = 0
        try:
            for k, chunk in enumerate(chunks):
                if stop.is_set():
                    break
                t0 = time.perf_counter()
                wins, previous = reads[k].result()  # read while the batch before was encoded
                if k + 1 < len(chunks):
                    nxt = [u for u, _ in chunks[k + 1]]
                    reads.append(self._reader.submit(self._read, nxt, versions, newest))
                keep = self.share.claim([u for u, _ in chunk])  # buckets still ours
                if not keep:
                    continue
                try:
                    wins = [wins[i] for i in keep]
                    prepared = self.prepare_windows(wins, versions, clear_dirty=True, t0=t0)
                    prepared.dirty_ts = [] if rescore else [chunk[i][1] for i in keep]
                    prepared.previous = previous
                    if pending is not None:
                        pending.result()
                except BaseException:
                    self.share.release()
                    raise
                pending = self._writer.submit(self._commit_claimed, prepared)
                n += len(keep)
        finally:
            if pending is not None:
                pending.result()
        return n

    def _read(
        self, uids: list[str], versions: Sequence[str], newest: int
    ) -> tuple[list[Window], Previous | None]:
        """The read stage: each window's `newest` events, those the versions' encoders read
        (the store keeps more for longer models; reading and decoding them all can cost more
        than the encode), and the users' vectors before when drift is on."""
        previous = self.drift.read(uids, versions) if self.drift is not None else None
        return self.windows.read(uids, newest), previous

    # ----- one batch ---------------------------------------------------------------------

    def prepare_windows(
        self, wins: Sequence[Window], versions: Sequence[str], clear_dirty: bool, t0: float
    ) -> Prepared:
        """Encode windows with each version into the writes of one batch."""
        t1 = time.perf_counter()
        at = now_ms()
        span = None
        if self.tracer is not None:
            span = self.tracer.start_span(
                "persona.refresh batch",
                attributes={"persona.users": len(wins), "persona.versions": list(versions),
                            "persona.backfill": not clear_dirty},
            )  # fmt: skip
        self._describe(versions)
        by_ver = encode_windows(self.encoders, wins, versions, at)
        t2 = time.perf_counter()
        writes: list[UserWrite] = []
        flat: list[StoredVector] = []
        for i, w in enumerate(wins):
            vs = [v for row in by_ver.values() if (v := row[i]) is not None]
            due = self.cfg.next_rescore(at, w.events[-1].ts_ms) if w.events else NO_RESCORE
            writes.append(UserWrite(w.user_id, vs, w.version if clear_dirty else None, due))
            flat += vs
        if self.metrics:
            self.metrics.stage_seconds.labels(stage="read").observe(t1 - t0)
            self.metrics.stage_seconds.labels(stage="encode").observe(t2 - t1)
            self.metrics.records_undecodable.inc(sum(w.undecodable for w in wins))
            for ver in versions:
                self.metrics.users_encoded.labels(version=ver).inc(sum(1 for w in wins if w.events))
                unknown = self.encoders.get(ver).tokenizer.take_unknown()
                for prop, n in unknown.items():
                    self.metrics.unknown_properties.labels(version=ver, property=prop).inc(n)
        return Prepared(writes, flat, started=t0, span=span)

    def _describe(self, versions: Sequence[str]) -> None:
        """Before each batch, when compiling was asked: whether each version's encoder runs
        compiled yet (metric; it compiles in the background). Once per version, before its
        first batch: record its score columns in the store (serving names the columns from
        them)."""
        for ver in versions:
            enc = self.encoders.get(ver)
            if self.metrics and self.encoders.compile:
                self.metrics.encoder_compiled.labels(version=ver).set(float(enc.compiled))
            if ver not in self._described:
                heads = enc.outcomes
                if heads is not None:
                    cols = heads.columns_json(self.cfg.audiences)
                    self.vectors.set_score_columns(ver, cols)
                self._described.add(ver)

    def _commit_claimed(self, batch: Prepared) -> WriteResult:
        try:
            return self.commit(batch)
        finally:
            self.share.release()

    def encode_and_commit(self, wins: Sequence[Window], version: str, t0: float) -> None:
        """Encode windows with one version and commit them, leaving dirty marks alone (the
        cutover's back-fill)."""
        self.commit(self.prepare_windows(wins, [version], clear_dirty=False, t0=t0))

    def commit(self, batch: Prepared) -> WriteResult:
        """Make one encoded batch durable. Steps, in order:

        1. publish every vector to the update log and wait for the broker's acks: a failure
           here writes nothing to the store and leaves every user dirty;
        2. one Lua call per bucket writes the vectors (skipping any older than the stored
           head) and clears each user's dirty mark only if the window version is still the
           one encoded: a failure leaves the users of the failed buckets dirty, with their
           vectors already in the log (a retry republishes them, which a compacted log
           absorbs). The store is therefore never ahead of the log;
        3. vectors the store refused because their user was forgotten after the window was
           read (`WriteResult.forgotten`) get a tombstone, so the log ends with one
           (services/refresh/forget.py);
        4. the stored heads of vectors the store skipped as older (`WriteResult.stale`) are
           published again, so the log ends as the store does (`republish_heads`).
        """
        if batch.span is None:
            return self._commit(batch)
        with trace.use_span(batch.span, end_on_exit=True):  # on the writer thread
            return self._commit(batch, kafka_headers())

    def _commit(
        self, batch: Prepared, headers: list[tuple[str, bytes]] | None = None
    ) -> WriteResult:
        t0 = time.perf_counter()
        if batch.vectors:
            self.publisher.publish(batch.vectors, headers)
        t1 = time.perf_counter()
        res = self.vectors.write(batch.writes)
        if res.forgotten:
            self.publisher.tombstones(res.forgotten)
            self.stats.refused_forgotten += len(res.forgotten)
        self.stats.republished += republish_heads(self.vectors, self.publisher, res.stale, headers)
        t2 = time.perf_counter()
        self._account(batch, res, t1 - t0, t2 - t1, t2 - batch.started)
        return res

    def _account(
        self, batch: Prepared, res: WriteResult, pub: float, wr: float, total: float
    ) -> None:
        account_batch(self.stats, self.metrics, batch.writes, batch.vectors, res,
                      (pub, wr, total), batch.dirty_ts, now_ms())  # fmt: skip
        if self.drift is not None and batch.dirty_ts:  # a round's batch, not a back-fill
            self.drift.observe(batch.previous, batch.vectors)

    def close(self) -> None:
        try:
            self._reader.shutdown(wait=True)
            self._writer.shutdown(wait=True)
            self.encoders.close()
        finally:
            self.publisher.close()
