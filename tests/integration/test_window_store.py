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
        relearnt: list[int] = []
        monkeypatch.setattr(store.router, "relearn", lambda: relearnt.append(1))
        with pytest.raises(ResponseError, match="non local key"):
            apply_events(store, ups)
        # no MOVED comes for a cross-slot script: the map is learnt again before raising
        # (else a slot that really moved under a chunk's first user failed every retry)
        assert relearnt == [1]
        monkeypatch.undo()
        res = apply_events(store, ups)
        assert res.applied + res.replayed == 120 and res.duplicate == 0
        assert 0 < res.replayed < 120  # some users went in with the failed call, not all
        for u, w in zip(ups, store.read([u.user_id for u in ups]), strict=True):
            assert w.user_id == u.user_id and [e.event_id for e in w.events] == ["e0", "e1"]
    finally:
        client.close()


def test_an_update_meeting_a_slot_mid_migration_writes_nothing_and_the_retry_applies_it() -> None:
    """A slot half migrated: the user's window key already on the target node, its events
    and meta still on the source. The update fails before any write (it once wrote the event
    record, failed on the window, and the retry after the migration took the event for a
    duplicate: lost), and the retry once the slot has moved applies it."""
    import time

    import redis
    from redis.crc import key_slot

    from services.stack import StackConfig

    with EmbeddedStack(StackConfig(cluster=True, topics=())) as st:  # its own: slots move
        client = connect(st.addresses.redis)
        try:
            store = WindowStore(client, WindowConfig())
            uid = "u-mig"
            apply_events(store, [UserUpdate(uid, 0, [(0, Event(uid, "a", 1000, "v"))])])
            wk, ek, mk = layout.user_keys(uid)
            slot = key_slot(mk)
            src = client.get_node_from_key(mk)  # type: ignore[union-attr]
            dst, *others = [n for n in client.get_primaries() if n.name != src.name]  # type: ignore[union-attr]
            rs, rd = (redis.Redis(host=n.host, port=n.port) for n in (src, dst))
            sid, did = (r.execute_command("CLUSTER", "MYID").decode() for r in (rs, rd))
            rd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
            rs.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", did)
            rs.execute_command("MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", wk)
            with pytest.raises(ResponseError, match="non local key"):
                apply_events(store, [UserUpdate(uid, 0, [(1, Event(uid, "b", 2000, "v"))])])
            assert rs.hkeys(ek) == [b"a"]  # nothing of the failed update written
            rest = rs.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            rs.execute_command("MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", *rest)
            for n in (src, dst, *others):
                redis.Redis(host=n.host, port=n.port).execute_command(
                    "CLUSTER", "SETSLOT", slot, "NODE", did
                )
            time.sleep(1)
            store.router.relearn()
            res = apply_events(store, [UserUpdate(uid, 0, [(1, Event(uid, "b", 2000, "v"))])])
            assert (res.applied, res.duplicate, res.replayed) == (1, 0, 0)
            assert [e.event_id for e in store.read([uid])[0].events] == ["a", "b"]
            for r in (rs, rd):
                r.close()
        finally:
            client.close()
