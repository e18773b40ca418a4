"""Refresh workers that divide the buckets (services/refresh/share.py), as real processes on
a private 3-node Valkey cluster and Tansu: no user encoded twice (beyond a 5 % allowance for
batches in flight at a rebalance), a SIGKILLed worker's share finished by the others, a
back-fill shared and flipped from the store's record.

Waits poll for a condition with generous bounds (the test machine is small and loaded).
Every worker and the stack stop in `finally`; the workers also die with the test process.
"""

from __future__ import annotations

import itertools
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.children import Child
from services.config import KafkaConfig, WindowConfig
from services.refresh import cutover
from services.refresh.config import RefreshConfig
from services.refresh.share import bucket_range, group_share
from services.stack import EmbeddedStack, StackConfig
from services.store.client import Client, connect
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.refresh.share_support import (
    RANGES,
    Group,
    assignment,
    missing_vectors,
    stable,
    stats,
    stop,
    wait_until,
)
from tests.refresh.support import add_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 3000
START_S = 180.0  # workers import torch and join the group: slow on a loaded 2-core machine
DONE_S = 300.0
_n = itertools.count()


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[EmbeddedStack]:
    """A 3-node cluster of this module's own: the workers scan every bucket's dirty set."""
    stack = EmbeddedStack(StackConfig(cluster=True))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def group(
    private_cluster: EmbeddedStack, models: tuple[Path, str, str]
) -> Iterator[tuple[Group, Client, WindowStore]]:
    """An emptied store, a new group name, a temporary folder for the workers' logs."""
    client = connect(private_cluster.addresses.redis)
    for node in WindowStore(client, WindowConfig()).router.primaries():
        node.flushall()
    ws = WindowStore(client, WindowConfig())
    with tempfile.TemporaryDirectory(prefix="persona-share-") as logs:
        name = f"share-{os.getpid()}-{next(_n)}-{time.monotonic_ns() % 1_000_000}"
        try:
            yield Group(private_cluster.addresses, models[0], name, Path(logs)), client, ws
        finally:
            ws.close()
            client.close()


def _users(prefix: str, n: int = USERS) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def _write(ws: WindowStore, users: list[str], seed: int) -> None:
    for lo in range(0, len(users), 500):
        add_events(ws, users[lo : lo + 500], 3, seed=seed + lo, offset0=lo * 3)


def test_workers_divide_the_dirty_users(
    group: tuple[Group, Client, WindowStore], models: tuple[Path, str, str]
) -> None:
    """2 workers share the pass; mid-pass a member joins the group and leaves again (two
    rebalances while batches are in flight), then a 3rd worker joins: every user gets a
    vector, encodes <= 1.05 x the dirty users, each of the first two encodes some."""
    g, client, ws = group
    users = _users("a")
    workers: list[Child] = []
    cfg = RefreshConfig(share_group=g.name, share_topic=f"{g.name}.shares")
    try:
        workers += [g.worker(0), g.worker(1)]
        wait_until("2 workers holding the 32 ranges", lambda: stable(workers), START_S, workers)
        _write(ws, users, seed=1)
        wait_until("some progress", lambda: ws.dirty_count() < 0.9 * USERS, DONE_S, workers)
        intruder = group_share(cfg, KafkaConfig(bootstrap=g.addresses.bootstrap))
        intruder.start()  # a member that encodes nothing: its ranges wait until it leaves
        try:
            assert intruder.wait_assigned(START_S), "the intruder got no assignment"
            held = len(intruder.ranges())
            left_mid_pass = ws.dirty_count()
        finally:
            intruder.close()
        workers.append(g.worker(2))
        wait_until(
            "every user refreshed",
            lambda: ws.dirty_count() == 0 and missing_vectors(client, users, models[1]) == 0,
            DONE_S,
            workers,
        )
        wait_until("the 3rd worker in the group", lambda: stable(workers), START_S, workers)
        stop(workers)
        got = [stats(w) for w in workers]
    finally:
        stop(workers, 10.0)
    print("encoded per worker:", [s["users"] for s in got], f"(an intruder held {held} ranges"
          f" with {left_mid_pass} users dirty)")  # fmt: skip
    encoded = sum(s["users"] for s in got)
    assert USERS <= encoded <= 1.05 * USERS, got
    assert got[0]["users"] > 0 and got[1]["users"] > 0, got
    assert all(s["errors"] == 0 for s in got), got


def test_killed_worker_share_is_taken_over(
    group: tuple[Group, Client, WindowStore], models: tuple[Path, str, str]
) -> None:
    """SIGKILL one of 3 workers mid-pass: the other two get its ranges within the session
    timeout and a rebalance, and every dirty user ends with a vector."""
    g, client, ws = group
    users = _users("k")
    workers: list[Child] = []
    try:
        workers += [g.worker(i, batch_size=16) for i in range(3)]
        wait_until("3 workers holding the 32 ranges", lambda: stable(workers), START_S, workers)
        victim = workers[0]
        theirs = {b for p in assignment(victim) or [] for b in bucket_range(p, RANGES)}
        _write(ws, users, seed=2)
        wait_until("some progress", lambda: ws.dirty_count() < 0.9 * USERS, DONE_S, workers)
        victim.signal(signal.SIGKILL)
        victim.wait(10.0)
        t_kill = time.monotonic()
        left = ws.dirty_count(theirs)
        survivors = workers[1:]
        takeover = wait_until(
            "the survivors holding all 32 ranges", lambda: stable(survivors), 120.0, workers
        )
        wait_until(
            "every user refreshed",
            lambda: ws.dirty_count() == 0 and missing_vectors(client, users, models[1]) == 0,
            DONE_S,
            workers,
        )
        done_s = time.monotonic() - t_kill
        stop(survivors)
        got = [stats(w) for w in survivors]
    finally:
        stop(workers, 10.0)
    print(f"killed with {left} of its users dirty; ranges moved in {takeover:.1f} s,"
          f" all done {done_s:.1f} s after the kill")  # fmt: skip
    assert left > 0, "the pass ended before the kill: nothing was left to take over"
    assert takeover < 60.0  # session timeout 6 s + a rebalance, on a loaded machine
    assert all(s["errors"] == 0 for s in got), got


def test_backfill_is_shared_and_flips_once(
    group: tuple[Group, Client, WindowStore], models: tuple[Path, str, str]
) -> None:
    """2 workers back-fill a promoted version, each its own buckets; the store records every
    bucket, one of them flips; every user has a vector of the new version, each encoded
    about once."""
    g, client, ws = group
    root, v1, v2 = models
    users = _users("b", 1500)
    workers: list[Child] = []
    vs = VectorStore(client)
    try:
        workers += [g.worker(0), g.worker(1)]
        wait_until("2 workers holding the 32 ranges", lambda: stable(workers), START_S, workers)
        _write(ws, users, seed=3)
        wait_until(
            "every user refreshed",
            lambda: ws.dirty_count() == 0 and missing_vectors(client, users, v1) == 0,
            DONE_S,
            workers,
        )
        assert cutover.promote(vs, root, v2) == "backfilling"
        wait_until("the flip to v2", lambda: vs.active_version() == v2, DONE_S, workers)
        assert missing_vectors(client, users, v2) == 0
        assert vs.versions() == {v1: "ready", v2: "active"}
        assert vs.backfilled(v2) == set()  # the record goes with the flip
        stop(workers)
        got = [stats(w) for w in workers]
    finally:
        vs.close()
        stop(workers, 10.0)
    backfilled = sum(s["backfilled"] for s in got)
    assert len(users) <= backfilled <= 1.05 * len(users), got
    assert all(s["backfilled"] > 0 for s in got), got
    assert sum(s["cutovers"] for s in got) == 1, got
