"""WindowStore beyond the store contract (tests/store/ holds every backend to the
reference rules): dirty marks in their keys, chunking per node, a stale slot map."""

from __future__ import annotations

import random

import pytest
from redis.exceptions import ResponseError

from contract.events import Event
from services.config import WindowConfig
from services.stack import EmbeddedStack
from services.store import layout
from services.store.client import connect, is_cluster
from services.store.windows import WindowStore
from tests.store_support import UserUpdate, apply_events

pytestmark = pytest.mark.integration


@pytest.fixture(params=["single", "cluster"])
def store(request: pytest.FixtureRequest) -> WindowStore:
    st: EmbeddedStack = request.getfixturevalue(
        "stack" if request.param == "single" else "cluster_stack"
    )
    client = connect(st.addresses.redis)
    assert is_cluster(client) == (request.param == "cluster")
    request.addfinalizer(client.close)
    return WindowStore(client, WindowConfig(max_events=6, horizon_ms=2_000))


def test_update_marks_user_dirty_with_newest_event_time(store: WindowStore) -> None:
    uid = f"d{random.randrange(10**9)}"
    apply_events(
        store,
        [UserUpdate(uid, 0, [(0, Event(uid, "a", 700, "v")), (1, Event(uid, "b", 900, "v"))])],
    )
    score = store.client.zscore(layout.dirty_key(layout.bucket(uid)), uid)
    assert score == 900
    apply_events(
        store, [UserUpdate(uid, 0, [(2, Event(uid, "c", 950, "v"))])]
    )  # NX: keeps its place
    assert store.client.zscore(layout.dirty_key(layout.bucket(uid)), uid) == 900
    assert store.dirty_count() >= 1


def _updates(pre: str, users: int, n: int) -> list[UserUpdate]:
    per_user = n
    return [
        UserUpdate(
            f"{pre}{u}",
            0,
            [
                (u * per_user + j, Event(f"{pre}{u}", f"e{j}", 1_000 + j, "v"))
                for j in range(per_user)
            ],
        )
        for u in range(users)
    ]


def test_many_users_in_small_chunks_per_node(store: WindowStore) -> None:
    """Users spread over every node, cut into chunks of 3 users per script call."""
    chunked = WindowStore(store.client, store.cfg, users_per_call=3)
    ups = _updates(f"c{random.randrange(10**9)}-", 200, 4)
    res = apply_events(chunked, ups)
    assert (res.applied, res.duplicate, res.replayed) == (800, 0, 0)
    assert sorted(res.window_lengths) == [4] * 200
    for u, w in zip(ups, chunked.read([u.user_id for u in ups]), strict=True):
        assert w.user_id == u.user_id and [e.event_id for e in w.events] == ["e0", "e1", "e2", "e3"]


def test_stale_slot_map_fails_the_call_and_a_retry_converges(
    cluster_stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call planned with an outdated slot map (slots moved between planning and the call)
    reaches a node that does not serve some of its users: the script stops at the first such
    user, having applied whole users only, and the retry (the consumer retries the batch)
    applies the rest; users applied by the failed call count as replays."""
    client = connect(cluster_stack.addresses.redis)
    try:
        store = WindowStore(client, WindowConfig())
        ups = _updates(f"s{random.randrange(10**9)}-", 60, 2)
        everything_on_one = lambda slots: [list(range(len(slots)))]  # noqa: E731
        monkeypatch.setattr(store.router, "node_groups", everything_on_one)
        with pytest.raises(ResponseError, match="non local key"):
            apply_events(store, ups)
        monkeypatch.undo()
        res = apply_events(store, ups)
        assert res.applied + res.replayed == 120 and res.duplicate == 0
        assert 0 < res.replayed < 120  # some users went in with the failed call, not all
        for u, w in zip(ups, store.read([u.user_id for u in ups]), strict=True):
            assert w.user_id == u.user_id and [e.event_id for e in w.events] == ["e0", "e1"]
    finally:
        client.close()
