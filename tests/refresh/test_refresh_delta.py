"""The short-term delta (issue #17; LAYOUT.md "Short-term delta"): after its APPLY, ingest
computes the head's output for the applied users and stores it; serving adds it as it is.

Real Valkey, a real tiny trained version with its head: the served vector from the delta
is the one the events give (nearline + head.delta over the events after the marker); a
delta the window has moved past (an APPLY since) is not used (the state answers, the same
numbers), nor one written on an older vector (a refresh deletes it); a write that lost the
race to a newer APPLY is refused (the ingest consumer storing deltas itself:
tests/refresh/test_refresh_state.py).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from encoder.shortterm import ShortTermHead
from services.common.heads import RegistryHeads
from services.ingest.states import StateKeeper
from services.store import deltas, layout
from services.store.recent import Recent
from tests.refresh.conftest import Env
from tests.refresh.support import add_events
from tests.refresh.test_refresh_shortterm import _after, _get, _nearline, _served

pytestmark = pytest.mark.integration


def _keeper(env: Env) -> StateKeeper:
    return StateKeeper(env.vectors.versions, RegistryHeads(env.models), every_s=0.0,
                       store=env.vectors)  # fmt: skip


def _head(env: Env) -> ShortTermHead:
    head = ShortTermHead.load(env.models, env.v1)
    assert head is not None
    return head


def _recent(env: Env, users: list[str], head: ShortTermHead) -> Recent:
    deadline = time.monotonic() + 30  # a bound on waiting, not a timing check
    _, recent = env.vectors.read_recent(users, env.v1, 1, head.max_events, deadline,
                                        row_dim=head.row_dim)  # fmt: skip
    return recent


def _sources(metrics: CollectorRegistry) -> dict[str, float | None]:
    return {src: metrics.get_sample_value("persona_serving_short_term_users_total",
                                          {"source": src})
            for src in ("ingest", "state", "window")}  # fmt: skip


def test_the_delta_is_served_while_it_covers_the_window(env: Env) -> None:
    users = [f"sd{i:03d}" for i in range(6)]
    add_events(env.windows, users, 4, seed=101)
    env.refresher().run(threading.Event(), until_idle=True)
    head, keeper = _head(env), _keeper(env)
    near = _nearline(env, env.v1, users)
    add_events(env.windows, users[:4], 2, seed=102, offset0=1000, states=keeper)
    assert keeper.fold_deltas(users) == (4, 0), "users 4, 5 have no new event: no delta"
    new = _after(env, users[:4], 2)
    recent = _recent(env, users, head)
    assert recent.delta_n is not None and recent.delta_n.tolist() == [2, 2, 2, 2, 0, 0]
    assert not recent.lengths.any() and recent.events == [[]] * 6, "no state, no window read"
    field = layout.delta_field(env.v1)
    before = [env.client.hget(layout.meta_key(u), field) for u in users[:4]]
    assert keeper.fold_deltas(users) == (4, 0), "ingest computes them again from the states"
    assert [env.client.hget(layout.meta_key(u), field) for u in users[:4]] == before

    want = near.copy()
    want[:4] += head.delta(near[:4], new)
    metrics = CollectorRegistry()
    with _served(env, env.models, users[0], metrics) as stub:
        got, resp = _get(stub, users)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert not np.allclose(got[:4], near[:4], atol=1e-4)
        assert list(resp.meta.short_term_events) == [2] * 4 + [0, 0]
        assert list(resp.meta.newest_event_ms)[:4] == [evs[-1].ts_ms for evs in new]
        assert _sources(metrics) == {"ingest": 4.0, "state": 0.0, "window": 0.0}

        # an APPLY ingest has not folded yet: user 0's delta no longer covers its window,
        # the state answers for it (the same numbers the events give)
        add_events(env.windows, users[:1], 1, seed=103, offset0=2000, states=keeper)
        three = _after(env, users[:1], 3)
        got, resp = _get(stub, users)
        np.testing.assert_allclose(got[0], near[0] + head.delta(near[:1], three)[0],
                                   rtol=0, atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(got[1:], want[1:], rtol=0, atol=1e-5)
        assert list(resp.meta.short_term_events) == [3] + [2] * 3 + [0, 0]
        assert _sources(metrics) == {"ingest": 7.0, "state": 1.0, "window": 0.0}
        assert keeper.fold_deltas(users[:1]) == (1, 0)
        again, _ = _get(stub, users)
        np.testing.assert_allclose(again, got, rtol=0, atol=1e-5)
        assert _sources(metrics)["ingest"] == 11.0
        twice, _ = _get(stub, [users[1], users[1], users[2]])  # a repeated id counts once
        np.testing.assert_array_equal(twice[0], twice[1])
        assert _sources(metrics)["ingest"] == 13.0

    # a delta computed before a newer APPLY is refused by the store
    meta = layout.meta_key(users[1])
    stale = _recent(env, users[1:2], head)
    assert stale.window_v is not None
    add_events(env.windows, users[1:2], 1, seed=104, offset0=3000, states=keeper)
    value = deltas.pack_deltas(np.array([0]), stale.window_v, np.array([1]), np.array([1]),
                               np.ones((1, near.shape[1]), np.float32))  # fmt: skip
    assert env.vectors.write_deltas(env.v1, users[1:2], stale.window_v, value) == 0
    assert env.client.hget(meta, layout.delta_field(env.v1)) is not None, "the old one stays"

    # a refresh writes the vectors: their deltas were computed on older ones and go
    env.refresher().run(threading.Event(), until_idle=True)
    assert all(env.client.hget(layout.meta_key(u), layout.delta_field(env.v1)) is None
               for u in users)  # fmt: skip
    after = _recent(env, users, head)
    assert after.delta_n is None and not after.lengths.any()
