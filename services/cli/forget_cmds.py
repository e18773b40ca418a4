"""`persona forget USER...` (a privacy request) and `persona forget --expired` (one expiry
pass now): the store first, then a tombstone per user and version to the update log
(services/refresh/forget.py says why in that order). Prints what went as one JSON object;
exit 1 when the store or the broker failed (run it again: both steps are idempotent)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.config import add_connection_args, setting_flag

if TYPE_CHECKING:
    from services.cli.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "forget",
        help="forget users: window, vectors of every version, index entries (privacy requests)",
        description="Deletes each user's window, dirty mark and vectors of every model version,"
        " sends tombstones to the update log so every replica's lookalike index drops them,"
        " and keeps their events up to now out of replays and `ingest --rebuild`; events"
        " after now start a new window. --expired does the same, as an expiry pass, for"
        " users without events for --expire-after-days.",
    )
    add_connection_args(p)
    p.add_argument("user_ids", nargs="*", metavar="USER", help="the users to forget")
    p.add_argument(
        "--file", type=Path, help="also forget the ids in FILE, one a line ('-' = stdin)"
    )
    p.add_argument(
        "--expired", action="store_true", help="forget the users inactive for --expire-after-days"
    )
    setting_flag(p, "refresh.expire_after_days", "--expire-after-days", metavar="DAYS")
    setting_flag(p, "refresh.embeddings_topic", "--embeddings-topic", metavar="TOPIC")
    p.set_defaults(func=cmd_forget)


def _ids(args: argparse.Namespace) -> list[str]:
    ids = list(args.user_ids)
    if args.file is not None:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text("utf-8")
        ids += [line.strip() for line in text.splitlines() if line.strip()]
    return ids


def cmd_forget(args: argparse.Namespace) -> int:
    from services.common.kafka import producer
    from services.refresh.forget import expire_inactive, forget_users
    from services.refresh.publish import Publisher
    from services.store.client import connect
    from services.store.forget import StoreForgetter

    s: Settings = args.settings
    ids = _ids(args)
    limit = s.window.max_id_bytes  # as ingest takes ids: a longer one was never stored, and
    long_ids = [u for u in ids if len(u.encode("utf-8")) > limit]  # its tombstone's key
    if long_ids or any("\x00" in u for u in ids):  # would be refused by the log for good
        print(f"persona forget: ids must be at most {limit} bytes, without NUL", file=sys.stderr)
        return 2
    days = s.refresh.expire_after_days
    if args.expired == bool(ids) or (args.expired and days is None):
        print(
            "persona forget: give USER ids (or --file), or --expired with --expire-after-days",
            file=sys.stderr,
        )
        return 2
    now_ms = time.time_ns() // 1_000_000  # the request's time, not a duration
    client = connect(s.store.redis)
    store = StoreForgetter(client)
    pub = Publisher(producer(s.kafka), s.refresh.embeddings_topic, s.refresh.max_publish_wait_s)
    try:
        if args.expired:
            assert days is not None
            res = expire_inactive(store, pub, now_ms, days)  # the owed tombstones too
        else:
            res = forget_users(store, pub, ids, now_ms)
    finally:
        pub.close()
        store.close()
        client.close()
    out = {
        "forgotten": len(res.users),
        "windows": res.windows,
        "vector_lists": res.vectors,
        "dirty_marks": res.dirty,
        "tombstones": len(res.users) * len(res.versions),
        "at_ms": now_ms,
    }
    print(json.dumps(out))
    return 0
