"""The `Vectors` contract, on memory, a Valkey node and a Valkey cluster (see conftest.py)."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import numpy as np
import pytest

from contract.events import Event
from services.store.records import StoredVector
from services.store.router import DeadlineReached
from services.store.vectors import CutoverError, UserWrite
from tests.store.conftest import HISTORY, Stores
from tests.store_support import UserUpdate, apply_events


def _ver() -> str:
    return f"vc-{uuid.uuid4().hex[:12]}"


def _vec(uid: str, ver: str, wv: int, ts: int = 1000, seed: int = 0) -> StoredVector:
    rng = np.random.default_rng(seed * 1000 + wv)
    return StoredVector(uid, ver, rng.normal(size=8).astype(np.float32), ts, wv + 1, wv)


def _put(stores: Stores, vs: list[StoredVector]) -> None:
    stores.vectors.write([UserWrite(v.user_id, [v]) for v in vs])


def test_newest_first_history_trimmed_missing_empty(stores: Stores) -> None:
    ver = _ver()
    users = [f"h-{ver}-{i}" for i in range(40)] + [f"{{odd}}\n\x00 {ver}"]
    for wv in range(5):
        _put(stores, [_vec(u, ver, wv, seed=i) for i, u in enumerate(users)])
    got = stores.vectors.get_batch([*users, "nobody-" + ver], ver, history=10)
    assert got[-1] == []
    for i, (u, vs) in enumerate(zip(users, got[:-1], strict=True)):
        assert [v.window_version for v in vs] == [4, 3, 2][:HISTORY]  # the oldest dropped
        assert all(v.user_id == u and v.model_version == ver for v in vs)
        assert np.array_equal(vs[0].vector, _vec(u, ver, 4, seed=i).vector)
    assert [len(x) for x in stores.vectors.get_batch(users[:2], ver)] == [1, 1]
    assert stores.vectors.get_batch(users[:1], _ver()) == [[]]  # another version's namespace


def test_an_older_window_is_skipped_the_same_window_replaces(stores: Stores) -> None:
    ver, uid = _ver(), f"race-{_ver()}"
    first = stores.vectors.write([UserWrite(uid, [_vec(uid, ver, 5, ts=1)])])
    older = stores.vectors.write([UserWrite(uid, [_vec(uid, ver, 4, ts=2)])])  # slower writer
    again = stores.vectors.write([UserWrite(uid, [_vec(uid, ver, 5, ts=3)])])  # a replay
    assert (first.written, first.skipped, first.replaced_computed_at_ms) == (1, 0, [])
    assert (older.written, older.skipped, older.replaced_computed_at_ms) == (0, 1, [])
    assert (again.written, again.skipped, again.replaced_computed_at_ms) == (1, 0, [1])
    [vs] = stores.vectors.get_batch([uid], ver, history=4)
    assert [(v.window_version, v.computed_at_ms) for v in vs] == [(5, 3)]


def test_a_write_clears_the_dirty_mark_only_for_the_window_it_saw(stores: Stores) -> None:
    ver = _ver()
    a, b = f"dirty-a-{ver}", f"dirty-b-{ver}"
    apply_events(stores.windows, [UserUpdate(u, 0, [(0, Event(u, "e", 5, "v"))]) for u in (a, b)])
    wa, wb = stores.windows.read([a, b])
    before = stores.windows.dirty_count()
    res = stores.vectors.write(
        [UserWrite(a, [_vec(a, ver, wa.version)], wa.version),
         UserWrite(b, [_vec(b, ver, wb.version)], wb.version - 1)]  # b moved on meanwhile
    )  # fmt: skip
    assert (res.written, res.cleared, res.still_dirty) == (2, 1, 1)
    assert stores.windows.dirty_count() == before - 1
    dirty = {u for u, _ in stores.windows.oldest_dirty(64)}
    assert a not in dirty and b in dirty
    stores.vectors.write([UserWrite(b, [], wb.version)])
    assert stores.windows.dirty_count() == before - 2


def test_read_batch_equals_get_batch_and_keeps_its_deadline(stores: Stores) -> None:
    ver = _ver()
    users = [f"rb-{ver}-{i}" for i in range(30)]
    for wv in (1, 2):
        _put(stores, [_vec(u, ver, wv, seed=i) for i, u in enumerate(users) if wv == 1 or i % 2])
    ask = [*users[:10], "nobody", users[3], *users[10:]]
    ref = stores.vectors.get_batch(ask, ver, history=2)
    got = stores.vectors.read_batch(ask, ver, 2, time.monotonic() + 5)
    assert got.count.tolist() == [len(vs) for vs in ref]
    for i, vs in enumerate(ref):
        for j, v in enumerate(vs):
            assert np.array_equal(got.vectors[i, j], v.vector)
            assert (got.computed_at_ms[i, j], got.window_version[i, j]) == (
                v.computed_at_ms,
                v.window_version,
            )
    with pytest.raises(DeadlineReached):
        stores.vectors.read_batch(users[:1], ver, 1, time.monotonic() - 1)


def test_pointer_flip_states_rollback_and_refusals(stores: Stores) -> None:
    v = stores.vectors
    v1, v2 = _ver(), _ver()
    v.set_active(v1)
    assert v.active_version() == v1 and v.versions()[v1] == "active"
    v.set_state(v2, "backfilling")
    with pytest.raises(CutoverError, match="not ready"):
        v.set_active(v2, require="ready")
    assert v.active_version() == v1
    v.set_state(v2, "ready")
    assert v.set_active(v2, require="ready") == v1
    assert v.active_version() == v2 and v.history_versions()[0] == v1
    assert v.versions()[v1] == "ready" and v.versions()[v2] == "active"
    assert v.rollback() == (v2, v1)
    assert v.active_version() == v1 and v.versions()[v2] == "ready"
    with pytest.raises(CutoverError):
        v.set_state(v1, "retired")  # the active one
    v.set_state(v2, "retired")
    with pytest.raises(CutoverError, match="retired"):
        v.set_active(v2)
    v.set_registry_seen(v1)
    assert v.registry_seen() == v1


def test_backfill_progress_by_bucket(stores: Stores) -> None:
    v, ver = stores.vectors, _ver()
    assert v.backfilled(ver) == set()
    v.mark_backfilled(ver, range(0, 32))
    v.mark_backfilled(ver, [31, 1000])
    v.mark_backfilled(ver, [])
    assert v.backfilled(ver) == {*range(32), 1000}
    v.reset_backfill(ver)
    assert v.backfilled(ver) == set()


def test_a_bad_version_id_is_refused(stores: Stores) -> None:
    for call in (
        lambda: stores.vectors.set_active("a:b"),
        lambda: stores.vectors.get_batch(["u"], "a/b"),
        lambda: stores.vectors.write([UserWrite("u", [_vec("u", "", 1)])]),
    ):
        with pytest.raises(ValueError, match="must match"):
            call()


def test_scores_ride_in_the_record_replace_skip_history_and_columns(stores: Stores) -> None:
    """Layout 2 (vector + outcome scores) through the same write rules as layout 1: an
    older window is skipped, the same window replaces (scores too), history may mix a
    layout-1 value with layout-2 ones, and the fast read equals the record-by-record one."""
    ver, uid = _ver(), f"sc-{_ver()}"
    plain = _vec(uid, ver, 1, ts=1)
    scored = [
        StoredVector(uid, ver, _vec(uid, ver, wv).vector, 10 + wv, wv + 1, wv,
                     np.linspace(0.01, 0.99, 5) * (wv / 10))
        for wv in (2, 3)
    ]  # fmt: skip
    stores.vectors.write([UserWrite(uid, [plain])])
    stores.vectors.write([UserWrite(uid, [scored[0]])])
    older = stores.vectors.write([UserWrite(uid, [replace(scored[0], window_version=0)])])
    assert older.skipped == 1
    again = replace(scored[0], scores=np.full(5, 0.5))
    assert stores.vectors.write([UserWrite(uid, [again])]).replaced_computed_at_ms == [12]
    stores.vectors.write([UserWrite(uid, [scored[1]])])
    [vs] = stores.vectors.get_batch([uid], ver, history=HISTORY)
    assert [v.window_version for v in vs] == [3, 2, 1][:HISTORY]
    np.testing.assert_allclose(vs[0].scores, scored[1].scores, atol=1e-3)  # float16
    np.testing.assert_allclose(vs[1].scores, 0.5)
    batch = stores.vectors.read_batch([uid, "nobody"], ver, HISTORY, time.monotonic() + 5)
    assert batch.scores is not None and batch.scores.shape == (2, HISTORY, 5)
    np.testing.assert_allclose(batch.scores[0, 0], scored[1].scores, atol=1e-3)
    if HISTORY >= 3:  # the layout-1 value has no scores: NaN, not zeros
        assert np.isnan(batch.scores[0, 2]).all()
    assert np.isnan(batch.scores[1]).all()
    assert stores.vectors.score_columns(ver) is None
    stores.vectors.set_score_columns(ver, '{"columns": []}')
    assert stores.vectors.score_columns(ver) == '{"columns": []}'
