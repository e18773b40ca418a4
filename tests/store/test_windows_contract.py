"""The `Windows` contract, on memory, a Valkey node and a Valkey cluster (see conftest.py)."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from typing import Any

import pytest

from contract.events import Event
from services.store import layout
from services.store.reference import ReferenceWindows
from tests.store.conftest import CFG, Stores
from tests.store_support import UserUpdate, apply_events, packed


def _pre() -> str:
    return f"wc{uuid.uuid4().hex[:10]}-"


def _ev(uid: str, eid: str, ts: int) -> Event:
    return Event(uid, eid, ts, "view", {"i": "x"})


def test_matches_the_reference_rules_under_replays_duplicates_and_disorder(
    stores: Stores,
) -> None:
    rng = random.Random(7)
    pre = _pre()
    recs: list[tuple[int, int, Event]] = []
    offsets = [0, 0, 0]
    for _ in range(1500):
        p = rng.randrange(3)
        uid = f"{pre}{rng.randrange(40)}"
        recs.append(
            (p, offsets[p], _ev(uid, f"e{rng.randrange(900)}", 10_000 + rng.randrange(5_000)))
        )
        offsets[p] += 1
    ref = ReferenceWindows(CFG)
    ref.apply_all(recs)
    i = 0
    while i < len(recs):
        chunk = recs[i : i + rng.randrange(1, 60)]
        groups: dict[tuple[str, int], list[tuple[int, Event]]] = defaultdict(list)
        for p, o, ev in chunk:
            groups[(ev.user_id, p)].append((o, ev))
        ups = [UserUpdate(u, p, evs) for (u, p), evs in groups.items()]
        apply_events(stores.windows, ups)
        if rng.random() < 0.3:  # a replay of the same batch changes nothing
            again = apply_events(stores.windows, ups)
            assert again.applied == 0 and again.replayed == len(chunk)
        i += len(chunk)
    uids = sorted(ref.users)
    store: Any = stores.windows  # offsets(): for operators and tests, not in the Protocol
    for uid, w in zip(uids, stores.windows.read(uids), strict=True):
        assert w.events == ref.window(uid), uid
        assert dict(store.offsets(uid)) == ref.users[uid].offsets
    # the newest n only (what the refresher reads for an encoder of n events), same version
    full = stores.windows.read(uids)
    for n in (1, 3, CFG.max_events + 5):
        for f, w in zip(full, stores.windows.read(uids, newest=n), strict=True):
            assert w.events == f.events[-n:] and w.version == f.version


def test_unknown_user_has_an_empty_window(stores: Stores) -> None:
    (w,) = stores.windows.read([f"{_pre()}nobody"])
    assert w.events == [] and w.version == 0


def test_hostile_user_ids_keep_separate_windows(stores: Stores) -> None:
    ids = ["{a}", "a", "{a", "a}", "x\ny", "x\r\ny", "é{}", "z" * 256, "{" + "b" * 10 + "}:w:c"]
    ids = [f"{_pre()}{u}" for u in ids] + [f"}}{_pre()}{{", f"{{}}{_pre()}"]
    res = apply_events(stores.windows, [UserUpdate(u, 0, [(5, _ev(u, f"e-{u}", 5))]) for u in ids])
    assert (res.applied, res.replayed, res.window_lengths) == (len(ids), 0, [1] * len(ids))
    for u, w in zip(ids, stores.windows.read(ids), strict=True):
        assert [(e.user_id, e.event_id) for e in w.events] == [(u, f"e-{u}")]


def test_replays_and_duplicates_change_nothing_a_rebuild_dedups(stores: Stores) -> None:
    uid = f"{_pre()}u"
    evs = [(k, _ev(uid, f"e{k}", 1_000 + k)) for k in range(4)]
    first = apply_events(stores.windows, [UserUpdate(uid, 0, evs)])
    (w,) = stores.windows.read([uid])
    assert (first.applied, first.duplicate, first.replayed) == (4, 0, 0) and w.version > 0
    again = apply_events(stores.windows, [UserUpdate(uid, 0, evs)])
    assert (again.applied, again.duplicate, again.replayed) == (0, 0, 4)
    resent = [(10, evs[0][1]), (11, _ev(uid, "new", 1_100)), (12, _ev(uid, "new", 1_100))]
    res = apply_events(stores.windows, [UserUpdate(uid, 0, resent)])
    assert (res.applied, res.duplicate, res.replayed) == (1, 2, 0)
    upd = UserUpdate(uid, 0, evs)
    rebuilt = stores.windows.apply_packed(packed([upd]), rebuild=True)
    assert (rebuilt.applied, rebuilt.duplicate, rebuilt.replayed) == (0, 4, 0)
    (after,) = stores.windows.read([uid])
    assert [e.event_id for e in after.events] == ["e0", "e1", "e2", "e3", "new"]
    assert after.version > w.version  # moved on once, for the one new event


def test_trim_by_horizon_then_count_counted(stores: Stores) -> None:
    uid = f"{_pre()}t"
    old = [(k, _ev(uid, f"old{k}", 1_000 + k)) for k in range(3)]
    apply_events(stores.windows, [UserUpdate(uid, 0, old)])
    new = [(10 + k, _ev(uid, f"n{k}", 5_000 + k)) for k in range(8)]  # the old ones fall out
    res = apply_events(stores.windows, [UserUpdate(uid, 0, new)])
    assert (res.applied, res.trimmed, res.window_lengths) == (8, 5, [CFG.max_events])
    (w,) = stores.windows.read([uid])
    assert [e.event_id for e in w.events] == [f"n{k}" for k in range(2, 8)]
    late = apply_events(stores.windows, [UserUpdate(uid, 0, [(20, _ev(uid, "late", 10))])])
    assert (late.applied, late.trimmed) == (1, 1)  # applied, and at once outside the horizon


def test_equal_timestamps_order_by_event_id(stores: Stores) -> None:
    uid = f"{_pre()}o"
    apply_events(
        stores.windows, [UserUpdate(uid, 0, [(0, _ev(uid, "b", 5)), (1, _ev(uid, "a", 5))])]
    )
    (w,) = stores.windows.read([uid])
    assert [e.event_id for e in w.events] == ["a", "b"]


def test_dirty_marks_keep_their_first_time_and_come_oldest_first(stores: Stores) -> None:
    pre = _pre()
    a = f"{pre}a"
    b = next(f"{pre}b{k}" for k in range(10_000) if layout.bucket(f"{pre}b{k}") == layout.bucket(a))
    before = stores.windows.dirty_count()
    apply_events(stores.windows, [UserUpdate(a, 0, [(0, _ev(a, "1", 700)), (1, _ev(a, "2", 900))])])
    apply_events(stores.windows, [UserUpdate(b, 0, [(0, _ev(b, "1", 800))])])
    apply_events(stores.windows, [UserUpdate(a, 0, [(2, _ev(a, "3", 950))])])  # keeps its place
    assert stores.windows.dirty_count() == before + 2
    mine = [(u, ts) for u, ts in stores.windows.oldest_dirty(64) if u.startswith(pre)]
    assert mine == [(b, 800), (a, 900)]  # oldest first; a's mark is its first update's newest
    one = [u for u, _ in stores.windows.oldest_dirty(1) if u.startswith(pre)]
    if stores.backend == "cluster":  # shared: another suite's user of that bucket may be older
        assert len(one) <= 1
    else:
        assert one == [b]  # the oldest of the bucket only


def test_dirty_marks_of_some_buckets_only(stores: Stores) -> None:
    """A refresher's share reads and counts the dirty marks of its buckets only."""
    pre = _pre()
    ids = [f"{pre}{k}" for k in range(40)]
    apply_events(stores.windows, [UserUpdate(u, 0, [(0, _ev(u, "1", 500))]) for u in ids])
    half = {layout.bucket(u) for u in ids[:20]}
    inside = {u for u in ids if layout.bucket(u) in half}
    got = {u for u, _ in stores.windows.oldest_dirty(64, half) if u.startswith(pre)}
    assert got == inside
    assert all(layout.bucket(u) in half for u, _ in stores.windows.oldest_dirty(64, half))
    assert stores.windows.dirty_count(half) >= len(inside)
    assert stores.windows.dirty_count(frozenset()) == 0
    assert stores.windows.oldest_dirty(64, set()) == []


def test_users_lists_everyone_with_a_window(stores: Stores) -> None:
    pre = _pre()
    ids = [f"{pre}{k}" for k in range(30)]
    apply_events(stores.windows, [UserUpdate(u, 1, [(7, _ev(u, "e", 100))]) for u in ids])
    assert sorted({u for u in stores.windows.users() if u.startswith(pre)}) == sorted(ids)


def test_a_record_this_code_cannot_read_is_left_out_and_counted(stores: Stores) -> None:
    """A window record of a newer layout (ingest upgraded first) or a corrupt one: the read
    leaves it out and counts it (`Window.undecodable`) instead of raising, which stalled
    every refresh round on that user (the oldest dirty one comes first every time)."""
    if stores.backend == "memory":
        pytest.skip("the memory store keeps Event objects: no record bytes to damage")
    uid = f"{_pre()}u"
    apply_events(
        stores.windows, [UserUpdate(uid, 0, [(i, _ev(uid, f"e{i}", 10 + i)) for i in range(3)])]
    )
    client = stores.windows.client  # type: ignore[attr-defined]
    _, events_key, _ = layout.user_keys(uid)
    client.hset(events_key, "e1", b"\x02newer layout")
    (w,) = stores.windows.read([uid])
    assert [e.event_id for e in w.events] == ["e0", "e2"] and w.undecodable == 1
