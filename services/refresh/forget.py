"""Forgetting users everywhere: the store, then the update log.

A privacy request (`persona forget`, the admin RPC) and the expiry of inactive users (the
refresher, `RefreshConfig.expire_after_days`) take the same two steps, in order:

1. the store (`services/store/forget.py`, one atomic script per user): window, dirty mark
   and vectors of every version deleted; a marker keeps old events and vectors out;
2. a tombstone per user and version to the update log, acks awaited: every replica's index
   follower drops the user, and log compaction drops the user's vectors.

Step 2 after step 1: a refresh batch encoded before the forget publishes its vector before
its store write, which the marker refuses (`WriteResult.forgotten`) and the refresher then
tombstones again, so the log always ends with a tombstone. A failure in step 2 raises: the
request must be retried (both steps are idempotent).
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
    log.info("forgot %d users (%d vector lists)", len(res.users), res.vectors)
    return res


def expire_inactive(
    store: Forgetter, publisher: Publisher, now_ms: int, after_days: float, chunk: int = 1000
) -> ForgetResult:
    """Forget every user whose newest event is more than `after_days` older than `now_ms`,
    each as of its newest event (a replay stays out, any newer event starts a new window)."""
    before = now_ms - int(after_days * DAY_MS)
    total = ForgetResult()
    for users in store.inactive(before, chunk):
        if not users:
            continue
        res = store.expire(users, before)
        publisher.tombstones([(u, v) for u in res.users for v in res.versions])
        total.users += res.users
        total.windows += res.windows
        total.vectors += res.vectors
        total.dirty += res.dirty
        total.versions = res.versions
    if total.users:
        log.info("expired %d users without events for %g days", len(total.users), after_days)
    return total
