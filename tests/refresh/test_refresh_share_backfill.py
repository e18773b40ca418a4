"""The cutover's back-fill by bucket range, on the in-memory stores (no processes): two
shares back-fill their halves, the store records the buckets, the flip waits for all of
them; a range taken over mid-scan is scanned again without encoding anyone twice."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.config import WindowConfig
from services.refresh.config import RefreshConfig
from services.refresh.cutover import Cutover, promote
from services.refresh.metrics import RefreshStats
from services.refresh.share import AllBuckets, bucket_range
from services.store import layout
from services.store.memory import MemoryWindows
from services.store.memory_vectors import MemoryVectors
from services.store.records import StoredVector
from services.store.vectors import UserWrite
from services.store.windows import Window
from tests.refresh.support import add_events


class FixedShare(AllBuckets):
    """Partitions of 4, as a group would give them (changed by the test)."""

    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions

    def owned(self) -> frozenset[int] | None:
        return frozenset(b for r in self.ranges() for b in r)

    def ranges(self) -> list[range]:
        return [bucket_range(p, 4) for p in sorted(self.partitions)]

    def claim(self, user_ids: Sequence[str]) -> list[int]:
        own = self.owned() or frozenset()
        return [i for i, u in enumerate(user_ids) if layout.bucket(u) in own]


def _setup(n: int = 400) -> tuple[MemoryWindows, MemoryVectors, list[str]]:
    ws = MemoryWindows(WindowConfig())
    vs = MemoryVectors(ws)
    users = [f"m{i:04d}" for i in range(n)]
    add_events(ws, users, 2, seed=1)  # type: ignore[arg-type]
    vs.set_active("v1")
    assert promote(vs, None, "v2") == "backfilling"
    return ws, vs, users


def _cutover(
    ws: MemoryWindows, vs: MemoryVectors, share: AllBuckets, encoded: list[str]
) -> Cutover:
    """A cutover whose encoder writes a constant vector and notes whom it encoded."""

    def encode_and_commit(wins: Sequence[Window], ver: str, _t0: float) -> None:
        encoded.extend(w.user_id for w in wins)
        one = np.ones(4, np.float32)
        vs.write([UserWrite(w.user_id, [StoredVector(w.user_id, ver, one, 1, 2, w.version)])
                  for w in wins])  # fmt: skip

    cfg = RefreshConfig(backfill_batch=50, follow_registry=False)
    stats = RefreshStats()
    return Cutover(cfg, vs, ws, Path("/nonexistent"), encode_and_commit, stats, share=share)


def test_two_shares_backfill_their_halves_and_one_flips() -> None:
    ws, vs, users = _setup()
    enc_a: list[str] = []
    enc_b: list[str] = []
    a = _cutover(ws, vs, FixedShare({0, 1}), enc_a)
    b = _cutover(ws, vs, FixedShare({2, 3}), enc_b)
    stop = threading.Event()
    while a.step(stop):
        pass
    assert vs.backfilled("v2") == set(range(512)) and vs.active_version() == "v1"
    assert not a.step(stop)  # its half done, the other's not: nothing to do, no flip
    while b.step(stop):
        pass
    assert vs.active_version() == "v2" and vs.versions()["v1"] == "ready"
    assert sorted(enc_a + enc_b) == users  # every user once
    assert all(layout.bucket(u) < 512 for u in enc_a)
    assert a.stats.cutovers + b.stats.cutovers == 1
    assert vs.backfilled("v2") == set()


def test_a_range_taken_over_mid_scan_is_finished_by_the_new_owner() -> None:
    ws, vs, users = _setup()
    enc_a: list[str] = []
    enc_b: list[str] = []
    share_a = FixedShare({0, 1, 2, 3})
    a = _cutover(ws, vs, share_a, enc_a)
    b = _cutover(ws, vs, FixedShare(set()), enc_b)
    stop = threading.Event()
    assert a.step(stop) and a.step(stop)  # two chunks of range 0, then a dies
    share_a.partitions = set()
    b.share = FixedShare({0, 1, 2, 3})
    while b.step(stop):
        pass
    assert vs.active_version() == "v2"
    assert sorted(set(enc_a + enc_b)) == users
    assert len(enc_a) + len(enc_b) == len(users)  # the new owner skipped a's users
    assert not a.step(stop)  # a holds nothing now


def test_a_version_promoted_again_backfills_again() -> None:
    _, vs, _ = _setup(40)
    vs.mark_backfilled("v3", range(layout.BUCKETS))  # left from an abandoned back-fill
    assert promote(vs, None, "v3") == "backfilling"
    assert vs.backfilled("v3") == set()
