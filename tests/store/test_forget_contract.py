"""The `Forgetter` contract (forget a user, expire inactive ones), on memory, a Valkey node
and a Valkey cluster (see conftest.py): what goes, and what keeps the user forgotten."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from contract.events import Event
from services.store.forget import MemoryForgetter, StoreForgetter
from services.store.layout import NO_RESCORE
from services.store.memory import MemoryWindows
from services.store.memory_vectors import MemoryVectors
from services.store.protocols import Forgetter
from services.store.records import StoredVector
from services.store.vectors import UserWrite
from tests.store.conftest import Stores
from tests.store_support import UserUpdate, packed

T0 = 1_765_000_000_000  # within each user's window: the suite's horizon is 2 s


@pytest.fixture
def forgetter(stores: Stores) -> Iterator[Forgetter]:
    if stores.backend == "memory":
        assert isinstance(stores.windows, MemoryWindows)
        assert isinstance(stores.vectors, MemoryVectors)
        yield MemoryForgetter(stores.windows, stores.vectors)
        return
    w: Any = stores.windows
    f = StoreForgetter(w.client)
    try:
        yield f
    finally:
        f.close()


def _ids() -> tuple[str, str, str]:
    pre = f"fg{uuid.uuid4().hex[:10]}"
    return f"{pre}-gone", f"{pre}-stays", f"vf-{pre}"


def _events(uid: str, offsets: range, ts0: int = T0) -> UserUpdate:
    return UserUpdate(
        uid, 0, [(o, Event(uid, f"{uid}-e{o}", ts0 + o, "view", {})) for o in offsets]
    )


def _apply(stores: Stores, ups: list[UserUpdate], rebuild: bool = False) -> Any:
    return stores.windows.apply_packed(packed(ups), rebuild=rebuild)


def _vec(uid: str, ver: str, wv: int) -> StoredVector:
    return StoredVector(uid, ver, np.full(4, 0.5, np.float32), T0, 3, wv)


def _dirty(stores: Stores) -> set[str]:
    return {u for u, _ in stores.windows.oldest_dirty(10_000)}


def _setup(stores: Stores, gone: str, stays: str, vers: list[str]) -> None:
    """Both users: 3 events (dirty), two vectors (history) under each version."""
    _apply(stores, [_events(gone, range(3)), _events(stays, range(3))])
    for v in vers:
        stores.vectors.set_state(v, "ready")
        for wv in (1, 2):
            stores.vectors.write([UserWrite(u, [_vec(u, v, wv)]) for u in (gone, stays)])


def test_forget_removes_window_offsets_dirty_mark_and_every_versions_vectors(
    stores: Stores, forgetter: Forgetter
) -> None:
    gone, stays, v = _ids()
    vers = [v + "a", v + "b"]
    _setup(stores, gone, stays, vers)
    assert {gone, stays} <= _dirty(stores)

    res = forgetter.forget([gone, gone], at_ms=T0 + 10)

    assert res.users == [gone] and (res.windows, res.vectors, res.dirty) == (1, 2, 1)
    assert set(vers) <= set(res.versions)
    w_gone, w_stays = stores.windows.read([gone, stays])
    assert w_gone.events == [] and len(w_stays.events) == 3
    assert gone not in _dirty(stores) and stays in _dirty(stores)
    store: Any = stores.windows
    assert dict(store.offsets(gone)) == {}  # the history of what was applied goes too
    for ver in vers:
        got = stores.vectors.get_batch([gone, stays], ver, history=4)
        assert [[x.window_version for x in vs] for vs in got] == [[], [2, 1]]


def test_replays_and_rebuilds_of_old_events_do_not_bring_the_user_back(
    stores: Stores, forgetter: Forgetter
) -> None:
    gone, stays, v = _ids()
    _setup(stores, gone, stays, [v])
    forgetter.forget([gone], at_ms=T0 + 10)

    replay = _apply(stores, [_events(gone, range(3))])  # the same offsets again
    rebuild = _apply(stores, [_events(gone, range(3))], rebuild=True)
    late = _apply(stores, [_events(gone, range(3, 6))])  # new offsets, event times before

    for r in (replay, rebuild, late):
        assert (r.applied, r.forgotten) == (0, 3)
    (w,) = stores.windows.read([gone])
    assert w.events == [] and gone not in _dirty(stores)


def test_a_vector_encoded_before_the_forget_is_refused(
    stores: Stores, forgetter: Forgetter
) -> None:
    gone, stays, v = _ids()
    _setup(stores, gone, stays, [v])
    (before,) = stores.windows.read([gone])  # a refresher read this window ...
    forgetter.forget([gone], at_ms=T0 + 10)
    res = stores.vectors.write([UserWrite(gone, [_vec(gone, v, before.version)], before.version)])
    assert (res.written, res.forgotten) == (0, [(gone, v)])  # ... and wrote after the forget
    assert stores.vectors.get_batch([gone], v) == [[]]


def test_an_event_after_the_forget_starts_a_new_window(
    stores: Stores, forgetter: Forgetter
) -> None:
    gone, stays, v = _ids()
    _setup(stores, gone, stays, [v])
    forgetter.forget([gone], at_ms=T0 + 10)
    forgetter.forget([gone], at_ms=T0 + 5)  # a second, earlier request keeps the later time

    r = _apply(stores, [_events(gone, range(8, 12))])  # times T0+8 .. T0+11
    (w,) = stores.windows.read([gone])
    assert (r.applied, r.forgotten) == (1, 3)
    assert [e.event_id for e in w.events] == [f"{gone}-e11"] and gone in _dirty(stores)
    res = stores.vectors.write([UserWrite(gone, [_vec(gone, v, w.version)], w.version)])
    assert (res.written, res.forgotten, res.cleared) == (1, [], 1)


def test_expiry_forgets_only_users_without_events_since_the_cutoff(
    stores: Stores, forgetter: Forgetter
) -> None:
    gone, stays, v = _ids()
    _setup(stores, gone, stays, [v])
    _apply(stores, [_events(stays, range(3, 5), ts0=T0 + 1_000)])  # newest T0+1004
    cutoff = T0 + 500
    listed = {u for chunk in forgetter.inactive(cutoff, count=7) for u in chunk}
    assert gone in listed and stays not in listed

    res = forgetter.expire([gone, stays], before_ms=cutoff)

    assert res.users == [gone] and res.vectors == 1
    w_gone, w_stays = stores.windows.read([gone, stays])
    assert w_gone.events == [] and len(w_stays.events) == 5
    got = stores.vectors.get_batch([gone, stays], v)
    assert [[x.window_version for x in vs] for vs in got] == [[], [2]]
    assert gone not in {u for chunk in forgetter.inactive(cutoff) for u in chunk}
    # forgotten as of its newest event (T0+2): a replay stays out, anything newer comes in
    r = _apply(stores, [_events(gone, range(4))], rebuild=True)
    assert (r.applied, r.forgotten) == (1, 3)


def test_rescore_times_are_kept_taken_out_and_forgotten(
    stores: Stores, forgetter: Forgetter
) -> None:
    """write_vectors.lua's rescore set: a write sets or ends a user's rescore time; a forget
    (and a write refused because of one) takes the user out."""
    gone, stays, v = _ids()
    third = stays + "-3"
    _setup(stores, gone, stays, [v])

    def due(at: int) -> list[str]:
        mine = {gone, stays, third}
        return [u for u in stores.vectors.due_rescores(10_000, at) if u in mine]

    stores.vectors.write(
        [UserWrite(gone, [_vec(gone, v, 2)], None, T0 + 100),
         UserWrite(stays, [_vec(stays, v, 2)], None, T0 + 50),
         UserWrite(third, [_vec(third, v, 1)], None, T0 + 70)]
    )  # fmt: skip
    assert due(T0 + 10) == [] and due(T0 + 60) == [stays]
    assert due(T0 + 100) == [stays, third, gone]  # longest due first
    stores.vectors.write([UserWrite(third, [_vec(third, v, 1)], None, NO_RESCORE)])
    stores.vectors.write([UserWrite(stays, [], None, None)])  # None: left as it is
    assert due(T0 + 100) == [stays, gone]

    forgetter.forget([gone], at_ms=T0 + 10)
    assert due(T0 + 100) == [stays]
    (w,) = stores.windows.read([stays])  # the window version a refresher would have read
    res = stores.vectors.write([UserWrite(gone, [_vec(gone, v, w.version)], None, T0 + 100)])
    assert res.forgotten == [(gone, v)] and due(T0 + 100) == [stays]


def test_tombstones_stay_owed_until_acknowledged(stores: Stores, forgetter: Forgetter) -> None:
    """A forget and an expiry leave the user's tombstones owed (meta `xp`) until the caller
    says they were acknowledged; a vector refused as forgotten owes them again. (An expiry
    whose tombstones failed had left its users nowhere to be found: no `t`, so no cycle
    listed them again, while every index kept their vectors.)"""
    gone, stays, v = _ids()
    _setup(stores, gone, stays, [v])
    (before,) = stores.windows.read([gone])

    def owed() -> set[str]:
        return {u for chunk in forgetter.pending(count=2) for u in chunk} & {gone, stays}

    assert owed() == set()
    forgetter.forget([gone], at_ms=T0 + 10)
    assert owed() == {gone}
    assert forgetter.held([gone, stays], [v, "v-none"]) == {(stays, v)}  # what a tombstone skips
    forgetter.tombstoned([gone])
    assert owed() == set()
    stores.vectors.write([UserWrite(gone, [_vec(gone, v, before.version)], before.version)])
    assert owed() == {gone}  # the refused vector is in the log: its tombstone is owed
    forgetter.tombstoned([gone, stays])
    forgetter.expire([stays], before_ms=T0 + 10_000)
    assert owed() == {stays}
