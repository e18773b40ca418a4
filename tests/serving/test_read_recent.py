"""`VectorStore.read_recent` (`read_recent.lua`, LAYOUT.md "Vector value, layout 3"): the
vectors as `read_batch` reads them, and per user the window events after the newest
vector's marker in window order (ts_ms, event_id), at most `max_events` of the newest,
oldest first. Real Valkey (single node and cluster): ties at the marker's time, a late event
older than the marker (left to the next refresh), a marker trimmed out of the window, a
record without a marker (layout 1-2: no events), a lost script cache."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from contract.events import Event
from services.config import WindowConfig
from services.stack import EmbeddedStack
from services.store import layout
from services.store.client import connect
from services.store.records import StoredVector, vector_key
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.serving.support import DB
from tests.store_support import UserUpdate, apply_events, packed

pytestmark = pytest.mark.integration
VER = "v-read-recent"
T = 1_763_000_000_000


def _read(vectors: VectorStore, *args: Any, **kw: Any) -> tuple[Any, list[list[Any]]]:
    """`read_recent` without the short-term state: (batch, each user's events)."""
    batch, recent = vectors.read_recent(*args, **kw)
    return batch, recent.events


@pytest.fixture(params=["node", "cluster"])
def stores(
    request: pytest.FixtureRequest, stack: EmbeddedStack, cluster_stack: EmbeddedStack
) -> Iterator[tuple[WindowStore, VectorStore]]:
    url = (
        f"{stack.addresses.redis}/{DB}"
        if request.param == "node"
        else cluster_stack.addresses.redis
    )
    client = connect(url)
    for u in ("rr-a", "rr-b", "rr-c", "rr-d", "rr-e"):
        client.delete(*layout.user_keys(u), vector_key(u, VER))
    windows, vectors = WindowStore(client, WindowConfig(max_events=6)), VectorStore(client)
    try:
        yield windows, vectors
    finally:
        for u in ("rr-a", "rr-b", "rr-c", "rr-d", "rr-e"):
            client.delete(*layout.user_keys(u), vector_key(u, VER))
        windows.close()
        vectors.close()
        client.close()


def _events(uid: str, spec: list[tuple[int, str]], offset0: int = 0) -> UserUpdate:
    return UserUpdate(uid, 0, [(offset0 + k, Event(uid, eid, T + dt, "view", {"item": eid}))
                               for k, (dt, eid) in enumerate(spec)])  # fmt: skip


def _vector(uid: str, marker: tuple[int, str] | None, wv: int = 0) -> StoredVector:
    """`wv`: the window version encoded (meta `v` then); the store's is 1 after one apply, so
    0 says "encoded before that apply" (the script then looks at the window)."""
    return StoredVector(uid, VER, np.full(4, wv, np.float32), T, 3, wv, None, marker)


def _ids(events: list[Event]) -> list[str]:
    return [e.event_id for e in events]


def test_events_after_the_marker_in_window_order(stores: tuple[WindowStore, VectorStore]) -> None:
    windows, vectors = stores
    # a: marker (10, "e2"); a tie at 10 after it ("e3"), one before it ("e1"), two later
    apply_events(windows, [_events("rr-a", [(0, "e0"), (10, "e1"), (10, "e2"), (10, "e3"),
                                             (20, "e4"), (30, "e5")])])  # fmt: skip
    # b: everything folded (the marker is the newest); c: no marker (layout 1)
    apply_events(windows, [_events("rr-b", [(0, "b0"), (5, "b1")]),
                           _events("rr-c", [(0, "c0"), (5, "c1")])])  # fmt: skip
    vectors.put_batch([_vector("rr-a", (T + 10, "e2")), _vector("rr-b", (T + 5, "b1"), wv=1),
                       _vector("rr-c", None)])  # fmt: skip
    deadline = time.monotonic() + 30  # a bound on waiting, not a timing check
    ids = ["rr-a", "rr-b", "rr-c", "rr-d"]  # d: nothing stored
    batch, recent = _read(vectors, ids, VER, 2, 8, deadline)
    assert batch.count.tolist() == [1, 1, 1, 0]
    assert batch.marker_ts_ms is not None
    assert batch.marker_ts_ms[:, 0].tolist() == [T + 10, T + 5, 0, 0]
    assert [_ids(r) for r in recent] == [["e3", "e4", "e5"], [], [], []]
    assert [e.ts_ms for e in recent[0]] == [T + 10, T + 20, T + 30]
    assert recent[0][1].props == {"item": "e4"} and recent[0][0].user_id == "rr-a"
    same = vectors.read_batch(ids, VER, 2, deadline)  # the vectors are read_batch's
    assert np.array_equal(same.vectors, batch.vectors) and same.count.tolist() == [1, 1, 1, 0]

    # chunks of 2 users a call: the same answer, in request order
    chunked = _read(vectors, ids[::-1], VER, 2, 8, deadline, users_per_call=2)
    assert [_ids(r) for r in chunked[1]] == [[], [], [], ["e3", "e4", "e5"]]
    assert np.array_equal(chunked[0].vectors, batch.vectors[::-1])

    # at most max_events, the newest
    _, recent = _read(vectors, ["rr-a"], VER, 1, 2, deadline)
    assert _ids(recent[0]) == ["e4", "e5"]
    _, recent = _read(vectors, ["rr-a"], VER, 1, 0, deadline)
    assert recent == [[]]

    # a late event (older than the marker) is left to the next refresh; a new one is read
    apply_events(windows, [_events("rr-a", [(5, "late"), (40, "e6")], offset0=10)])
    _, recent = _read(vectors, ["rr-a"], VER, 1, 8, deadline)
    assert _ids(recent[0]) == ["e3", "e4", "e5", "e6"]

    # the next refresh's vector (marker e6) folds them all: nothing left for the head
    vectors.put_batch([_vector("rr-a", (T + 40, "e6"), wv=2)])
    batch, recent = _read(vectors, ["rr-a"], VER, 2, 8, deadline)
    assert recent == [[]] and batch.count.tolist() == [2]
    assert batch.marker_ts_ms is not None and batch.marker_ts_ms[0].tolist() == [T + 40, T + 10]


def test_a_trimmed_marker_reads_every_event_from_its_time_on(
    stores: tuple[WindowStore, VectorStore],
) -> None:
    windows, vectors = stores
    apply_events(windows, [_events("rr-e", [(0, "x0"), (10, "x1"), (20, "x2")])])
    vectors.put_batch([_vector("rr-e", (T + 10, "x1"))])
    # six more events: max_events 6 trims x0, x1 (the marker) and x2
    apply_events(windows, [_events("rr-e", [(30 + k, f"y{k}") for k in range(6)], offset0=3)])
    _, recent = _read(vectors, ["rr-e"], VER, 1, 10, time.monotonic() + 30)
    assert _ids(recent[0]) == [f"y{k}" for k in range(6)]


def test_a_lost_script_cache_is_reloaded(stores: tuple[WindowStore, VectorStore]) -> None:
    windows, vectors = stores
    apply_events(windows, [_events("rr-a", [(0, "e0"), (10, "e1")])])
    vectors.put_batch([_vector("rr-a", (T, "e0"))])
    for node in vectors.router.primaries():
        node.script_flush()
    _, recent = _read(vectors, ["rr-a"], VER, 1, 8, time.monotonic() + 30)
    assert _ids(recent[0]) == ["e1"]


def test_the_short_term_state_is_read_with_the_vectors(
    stores: tuple[WindowStore, VectorStore],
) -> None:
    """Rows kept by APPLY (made-up rows of H = 4 here) come back with the vector read, in
    window order; a written vector drops the rows it folded in; on one node and a cluster."""
    windows, vectors = stores
    h = 4
    spec = layout.StateSpec(((VER, h),))

    def apply(uid: str, evs: list[tuple[int, str]], offset0: int) -> np.ndarray:
        rows = np.arange(len(evs) * h, dtype=np.float32).reshape(-1, h) + offset0
        up = packed([_events(uid, evs, offset0)])[0]
        windows.apply_packed([replace(up, rows=rows.tobytes())], states=spec)
        return rows

    apply("rr-a", [(0, "e0")], 0)
    vectors.put_batch([_vector("rr-a", (T, "e0"), wv=1)])  # folds e0: its row goes
    assert vectors.client.hget(layout.meta_key("rr-a"), layout.state_field(VER)) is None
    first = apply("rr-a", [(10, "e1"), (20, "e2")], 10)
    second = apply("rr-a", [(30, "e3")], 20)
    deadline = time.monotonic() + 30  # a bound on waiting, not a timing check
    _, recent = vectors.read_recent(["rr-b", "rr-a"], VER, 1, 8, deadline, row_dim=h)
    assert recent.lengths.tolist() == [0, 3] and recent.events == [[], []]
    np.testing.assert_array_equal(recent.rows, np.concatenate([first, second]))
    assert recent.newest_ms.tolist() == [0, T + 30]
    _, recent = vectors.read_recent(["rr-a"], VER, 1, 2, deadline, row_dim=h)  # the newest 2
    np.testing.assert_array_equal(recent.rows, np.concatenate([first[1:], second]))

    vectors.put_batch([_vector("rr-a", (T + 20, "e2"), wv=2)])  # folds e1, e2
    _, recent = vectors.read_recent(["rr-a"], VER, 1, 8, deadline, row_dim=h)
    np.testing.assert_array_equal(recent.rows, second)
    state = vectors.client.hget(layout.meta_key("rr-a"), layout.state_field(VER))
    assert state is not None and len(state) == layout.STATE_ENTRY.size + 4 * h


def test_a_record_this_code_cannot_read_is_left_out_of_the_recent_events(
    stores: tuple[WindowStore, VectorStore],
) -> None:
    """A newer layout's record after the marker (ingest upgraded first): the read leaves it
    out instead of raising, which failed every GetEmbeddings naming the user until the
    refresher, which now encodes around it, moved the marker past it (it never does)."""
    windows, vectors = stores
    apply_events(windows, [_events("rr-x", [(0, "x0"), (10, "x1"), (20, "x2")])])
    vectors.put_batch([_vector("rr-x", (T, "x0"))])
    client: Any = windows.client
    client.hset(layout.user_keys("rr-x")[1], "x1", b"\x02newer layout")
    _, recent = _read(vectors, ["rr-x"], VER, 1, 8, time.monotonic() + 30)
    assert _ids(recent[0]) == ["x2"]
