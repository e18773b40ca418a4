"""Forgetting users everywhere: the store, then the update log.

A privacy request (`persona forget`, the admin RPC) and the expiry of inactive users (the
refresher, `RefreshConfig.expire_after_days`) take the same two steps, in order:

1. the store (`services/store/forget.py`, one atomic script per user): window, dirty mark
   and vectors of every version deleted; a marker keeps old events and vectors out;
2. a tombstone per user and version to the update log, acks awaited: every replica's index
   follower drops the user, and log compaction drops the user's vectors.

Step 2 after step 1: a refresh batch encoded before the forget publishes its vector before
its store write, which the marker refuses (`WriteResult.forgotten`) and the refresher then
tombstones again, so the log always ends with a tombstone. A failure in step 2 raises (a
request may be retried: both steps are idempotent), and is not lost either way: the store
keeps the tombstones owed (meta `xp`, set by step 1 and by a refused vector, removed once
they are acknowledged), and every expiry cycle publishes the owed ones first
(`flush_owed`: only for versions the store holds no vector of, so a user who came back keeps
the new vectors published since). Left: a vector refused between a forget's tombstones and
their acknowledgement has its flag cleared with theirs; if its own tombstone then fails,
the log ends with that vector until the user is forgotten again; and a returning user's
vector published but not yet written when the owed ones are read is hidden by them until
the user's next refresh (another refresher of the group writing at that instant).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.refresh.publish import Publisher
from services.store.forget import ForgetResult
from services.store.protocols import Forgetter

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


def forget_users(
    store: Forgetter, publisher: Publisher, user_ids: Sequence[str], at_ms: int
) -> ForgetResult:
    """Forget `user_ids` as of `at_ms` (the request's time: their events at or before it
    stay out, through replays and `ingest --rebuild`; later events start a new window)."""
    res = store.forget(user_ids, at_ms)
    publisher.tombstones([(u, v) for u in res.users for v in res.versions])
    store.tombstoned(res.users)
    log.info("forgot %d users (%d vector lists)", len(res.users), res.vectors)
    return res


def flush_owed(store: Forgetter, publisher: Publisher) -> int:
    """Publish the tombstones still owed (a forget, an expiry or a refused vector whose own
    publish failed), one per user and version the store knows (repeats are harmless in a
    compacted log) that the store holds no vector of: a user who
    came back has new vectors, published after the forget, which a tombstone now would hide
    from every index. Then mark them acknowledged. Returns users."""
    n, versions = 0, store.versions()
    for users in store.pending():
        if users:
            held = store.held(users, versions)
            publisher.tombstones([(u, v) for u in users for v in versions if (u, v) not in held])
            store.tombstoned(users)
            n += len(users)
    if n:
        log.warning("published the owed tombstones of %d forgotten users", n)
    return n


def expire_inactive(
    store: Forgetter,
    publisher: Publisher,
    now_ms: int,
    after_days: float | None,
    chunk: int = 1000,
) -> ForgetResult:
    """The owed tombstones first (`flush_owed`); then, unless `after_days` is None, forget
    every user whose newest event is more than `after_days` older than `now_ms`, each as of
    its newest event (a replay stays out, any newer event starts a new window)."""
    try:  # owed tombstones that keep failing must not hold the expiry back
        flush_owed(store, publisher)
    except Exception:
        log.exception("publishing the owed tombstones failed; tried again next cycle")
    total = ForgetResult()
    if after_days is None:
        return total
    before = now_ms - int(after_days * DAY_MS)
    for users in store.inactive(before, chunk):
        if not users:
            continue
        res = store.expire(users, before)
        publisher.tombstones([(u, v) for u in res.users for v in res.versions])
        store.tombstoned(res.users)
        total.users += res.users
        total.windows += res.windows
        total.vectors += res.vectors
        total.dirty += res.dirty
        total.versions = res.versions
    if total.users:
        log.info("expired %d users without events for %g days", len(total.users), after_days)
    return total
