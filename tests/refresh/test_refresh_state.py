"""The short-term state (issue #17; LAYOUT.md "Short-term state"): ingest keeps each new
event's head row beside the window, and serving folds a user's new events from those rows,
read with the vector, instead of reading the window by script.

Real Valkey, real tiny trained versions with heads: the served vectors from the state are
the ones the events give (nearline + head.delta over the events after the marker); the
state is used only when it accounts for every window change since the vector (events
applied without rows, more than the state keeps, a late event: the window is read, the
answer the same); forgetting a user deletes its state; the ingest consumer keeps it, and
the deltas serving adds (tests/refresh/test_refresh_delta.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from encoder.shortterm import ShortTermHead
from services.common.heads import RegistryHeads
from services.config import KafkaConfig, WindowConfig
from services.ingest.consumer import Ingestor
from services.ingest.metrics import ingest_metrics
from services.ingest.produce import produce_events
from services.ingest.states import StateKeeper
from services.store import layout
from services.store.forget import StoreForgetter
from services.store.recent import Recent
from tests.refresh.conftest import Env
from tests.refresh.support import T0, add_events
from tests.refresh.test_refresh_shortterm import _after, _get, _nearline, _served
from tests.store_support import UserUpdate, packed

pytestmark = pytest.mark.integration


def _keeper(env: Env) -> StateKeeper:
    return StateKeeper(env.vectors.versions, RegistryHeads(env.models), every_s=0.0)


def _head(env: Env) -> ShortTermHead:
    head = ShortTermHead.load(env.models, env.v1)
    assert head is not None
    return head


def _recent(env: Env, users: list[str], head: ShortTermHead, row_dim: int) -> Recent:
    _, recent = env.vectors.read_recent(users, env.v1, 1, head.max_events, time.monotonic() + 30,
                                        row_dim=row_dim)  # fmt: skip
    return recent


def test_the_state_gives_what_the_events_give(env: Env) -> None:
    users = [f"ss{i:03d}" for i in range(10)]
    add_events(env.windows, users, 4, seed=61)
    env.refresher().run(threading.Event(), until_idle=True)
    head, keeper = _head(env), _keeper(env)
    assert [v for v, _ in keeper.current()] == [env.v1]
    near = _nearline(env, env.v1, users)
    # three applies for the first user, one for users 1-5 (two events), none for the rest
    add_events(env.windows, users[:6], 2, seed=62, offset0=1000, states=keeper)
    add_events(env.windows, users[:1], 1, seed=63, offset0=2000, states=keeper)
    add_events(env.windows, users[:1], 1, seed=64, offset0=3000, states=keeper)
    new = _after(env, users[:6], 2)
    new[0] = _after(env, users[:1], 4)[0]

    recent = _recent(env, users, head, head.row_dim)
    assert recent.lengths.tolist() == [4, 2, 2, 2, 2, 2, 0, 0, 0, 0], "read from the state"
    assert recent.events == [[]] * 10, "no window read"
    np.testing.assert_array_equal(recent.rows, head.event_rows([e for evs in new for e in evs]))
    assert recent.newest_ms[:6].tolist() == [evs[-1].ts_ms for evs in new]
    by_window = _recent(env, users, head, 0)
    assert not by_window.lengths.any()
    assert [[e.event_id for e in r] for r in by_window.events[:6]] == [
        [e.event_id for e in evs] for evs in new
    ], "without row_dim the window is read: the same events"

    want = near.copy()
    want[:6] += head.delta(near[:6], new)
    with _served(env, env.models, users[0]) as stub:
        got, resp = _get(stub, users)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not np.allclose(got[:6], near[:6], atol=1e-4)
    assert list(resp.meta.short_term_events) == [4] + [2] * 5 + [0] * 4
    assert list(resp.meta.newest_event_ms)[:6] == [evs[-1].ts_ms for evs in new]

    # a late event (older than the marker): neither path folds it
    marker_ts = env.windows.read(users[6:7])[0].events[-1].ts_ms
    late = _after(env, users[6:7], 1)[0][0]
    late = replace(late, event_id="late", ts_ms=marker_ts - 500)
    spec, rows = keeper.rows([late])
    assert spec is not None and rows is not None
    up = packed([UserUpdate(users[6], 0, [(9000, late)])])[0]
    env.windows.apply_packed([replace(up, rows=rows.tobytes())], states=spec)
    for dim in (head.row_dim, 0):  # the state is out of time order: the window is read
        st = _recent(env, users[6:7], head, dim)
        assert st.lengths.tolist() == [0] and st.events == [[]]

    # the next refresh folds them all: the new vectors drop them from the state
    field = layout.state_field(env.v1)
    assert env.client.hget(layout.meta_key(users[0]), field)
    env.refresher().run(threading.Event(), until_idle=True)
    assert all(env.client.hget(layout.meta_key(u), field) is None for u in users)
    after = _recent(env, users, head, head.row_dim)
    assert not after.lengths.any() and after.events == [[]] * 10, "the window is unchanged"


def test_the_window_is_read_when_the_state_does_not_account_for_it(env: Env) -> None:
    users = [f"sf{i:03d}" for i in range(5)]
    add_events(env.windows, users, 4, seed=71)
    env.refresher().run(threading.Event(), until_idle=True)
    head, keeper = _head(env), _keeper(env)
    near = _nearline(env, env.v1, users)
    # user 0: one apply with rows, one without (ingest without the models); user 1: rows
    # only; user 2: more applies than a state of 2 entries keeps
    add_events(env.windows, users[:2], 1, seed=72, offset0=1000, states=keeper)
    add_events(env.windows, users[:1], 1, seed=73, offset0=2000)
    base = _after(env, users[2:3], 1)[0][0]
    for k in range(3):
        ev = replace(base, event_id=f"sf-cap{k}", ts_ms=base.ts_ms + 1000 + k)
        spec, rows = keeper.rows([ev])
        assert spec is not None and rows is not None
        up = packed([UserUpdate(users[2], 0, [(5000 + k, ev)])])[0]
        env.windows.apply_packed([replace(up, rows=rows.tobytes())], states=replace(spec, cap=2))
    # user 4: two events at the same time (their order is their ids': the window's)
    tie = [replace(base, user_id=users[4], event_id=f"sf-tie-{c}", ts_ms=base.ts_ms + 9000)
           for c in "ba"]  # fmt: skip
    spec, rows = keeper.rows(tie)
    assert spec is not None and rows is not None
    up = packed([UserUpdate(users[4], 0, [(8000, tie[0]), (8001, tie[1])])])[0]
    env.windows.apply_packed([replace(up, rows=rows.tobytes())], states=spec)
    recent = _recent(env, users, head, head.row_dim)
    assert recent.lengths.tolist() == [0, 1, 0, 0, 0]
    assert [len(e) for e in recent.events] == [2, 0, 3, 0, 2], "the window read for 0, 2, 4"
    assert [e.event_id for e in recent.events[4]] == ["sf-tie-a", "sf-tie-b"]
    new = _after(env, users, 3)
    new = [new[0][-2:], new[1][-1:], new[2], [], new[4][-2:]]
    want = near + head.delta(near, new)
    metrics = CollectorRegistry()
    with _served(env, env.models, users[0], metrics) as stub:
        got, resp = _get(stub, users)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert list(resp.meta.short_term_events) == [2, 1, 3, 0, 2]
    sources = {
        src: metrics.get_sample_value("persona_serving_short_term_users_total", {"source": src})
        for src in ("state", "window")
    }
    assert sources == {"state": 1.0, "window": 3.0}, "users 1 / 0, 2, 4 (the metric SREs watch)"

    # a version no longer kept loses its field at the user's next APPLY with a state
    meta, field = layout.meta_key(users[3]), layout.state_field(env.v1)
    ev = replace(base, user_id=users[3], event_id="sf-two", ts_ms=base.ts_ms + 5000)
    heads = {v: ShortTermHead.load(env.models, v) for v in (env.v1, env.v2)}
    kept = [(v, h) for v, h in heads.items() if h is not None]
    assert len(kept) == 2
    rows = np.concatenate([h.event_rows([ev]) for _, h in kept], axis=1)
    both = layout.StateSpec(tuple((v, h.row_dim) for v, h in kept))
    up = packed([UserUpdate(users[3], 0, [(6000, ev)])])[0]
    env.windows.apply_packed([replace(up, rows=rows.tobytes())], states=both)
    assert env.client.hget(meta, layout.state_field(env.v2))
    add_events(env.windows, users[3:4], 1, seed=74, offset0=7000, states=keeper)
    assert env.client.hget(meta, layout.state_field(env.v2)) is None
    assert env.client.hget(meta, field)

    # forgetting a user deletes its state with its window and vectors
    meta = layout.meta_key(users[1])
    assert env.client.hget(meta, field)
    StoreForgetter(env.client).forget(users[1:2], T0 + 10**9)
    assert env.client.hget(meta, field) is None


def test_the_ingest_consumer_keeps_the_state_and_deltas(
    env: Env, make_topic: Callable[..., str]
) -> None:
    """As `persona ingest --models` runs it: the state in the APPLY, then each applied user's
    delta (LAYOUT.md "Short-term delta"), which serving adds."""
    users = [f"si{i:03d}" for i in range(3)]
    add_events(env.windows, users, 4, seed=81)
    env.refresher().run(threading.Event(), until_idle=True)
    head = _head(env)
    near = _nearline(env, env.v1, users)
    last = env.windows.read(users[:1])[0].events[-1]
    evs = [replace(last, event_id=f"topic-{k}", ts_ms=last.ts_ms + 1000 + k) for k in range(2)]
    kcfg = KafkaConfig(bootstrap=env.bootstrap, topic=make_topic(env.bootstrap, 2, "ev"),
                       group_id=f"g-{uuid.uuid4().hex}")  # fmt: skip
    assert produce_events(kcfg, evs) == 2
    keeper = StateKeeper(env.vectors.versions, RegistryHeads(env.models), every_s=0.0,
                         store=env.vectors)  # fmt: skip
    registry = CollectorRegistry()
    ing = Ingestor(kcfg, WindowConfig(), env.windows, ingest_metrics(registry), states=keeper)
    assert ing.run(threading.Event(), until_idle=True, poll_ms=100).applied == 2
    name = "persona_ingest_short_term_deltas_total"
    written = registry.get_sample_value(name, {"result": "written"})
    assert written is not None and written >= 1
    assert registry.get_sample_value(name, {"result": "failed"}) is None
    recent = _recent(env, users, head, head.row_dim)
    assert recent.delta_n is not None and recent.delta_n.tolist() == [2, 0, 0]
    assert not recent.lengths.any() and recent.events == [[]] * 3
    assert env.client.hget(layout.meta_key(users[0]), layout.state_field(env.v1))
    stored = _after(env, users[:1], 2)
    with _served(env, env.models, users[0]) as stub:
        got, resp = _get(stub, users)
    np.testing.assert_allclose(got[0], near[0] + head.delta(near[:1], stored)[0],
                               rtol=0, atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(got[1:], near[1:])
    assert list(resp.meta.short_term_events) == [2, 0, 0]


def test_after_a_cutover_each_written_version_keeps_its_own_state(env: Env) -> None:
    """v2 active, v1 ready (still written): ingest keeps both states, each with its own
    head's rows, and each version's GetEmbeddings folds its own from the state; then
    ingest's deltas, one per version, each added by that version's GetEmbeddings."""
    users = [f"sc{i:03d}" for i in range(6)]
    add_events(env.windows, users, 4, seed=91)
    env.refresher().run(threading.Event(), until_idle=True)
    env.cut_over_to_v2()
    keeper = _keeper(env)
    assert sorted(v for v, _ in keeper.current()) == sorted([env.v1, env.v2])
    add_events(env.windows, users[:3], 2, seed=92, offset0=1000, states=keeper)
    new = _after(env, users[:3], 2)
    with _served(env, env.models, users[0]) as stub:
        for phase, pinned, ver in (("state", "", env.v2), ("state", env.v1, env.v1),
                                   ("delta", "", env.v2), ("delta", env.v1, env.v1)):  # fmt: skip
            if phase == "delta" and ver == env.v2:
                keeper.store = env.vectors  # as `persona ingest --models` runs it
                assert keeper.fold_deltas(users) == (6, 0), "3 users x 2 versions"
            head = ShortTermHead.load(env.models, ver)
            assert head is not None
            deadline = time.monotonic() + 30  # a bound on waiting, not a timing check
            _, recent = env.vectors.read_recent(
                users, ver, 1, head.max_events, deadline, row_dim=head.row_dim
            )
            if phase == "state":
                assert recent.lengths.tolist() == [2, 2, 2, 0, 0, 0], f"{ver}: from its state"
                np.testing.assert_array_equal(
                    recent.rows, head.event_rows([e for evs in new for e in evs])
                )
            else:
                assert recent.delta_n is not None, f"{ver}: its own deltas"
                assert recent.delta_n.tolist() == [2, 2, 2, 0, 0, 0]
            near = _nearline(env, ver, users)
            got, resp = _get(stub, users, version=pinned)
            assert resp.model_version == ver
            np.testing.assert_allclose(got[:3], near[:3] + head.delta(near[:3], new),
                                       rtol=0, atol=1e-5)  # fmt: skip
            np.testing.assert_array_equal(got[3:], near[3:])
