"""The Go front (front/go) under a version with a short-term head (milestone 2): default,
combined and short-term GetEmbeddings answered by the front itself where every user's row
is the nearline vector plus ingest's delta (`d<ver>`, LAYOUT.md "Short-term delta") or
nothing new since the vector, equal to the Python server's answers (age_seconds aside, bit
for bit otherwise); a request with a user that needs the short-term state or the window
(`read_recent.lua`), or scores to rescore, forwarded. A real tiny trained version with its
head (tests/refresh/conftest.py's `tiny_version`), windows and states written as ingest writes them
(`add_events` with a `StateKeeper`), deltas by `StateKeeper.fold_deltas`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from persona.v1 import service_pb2 as pb

from encoder.shortterm import ShortTermHead
from services.config import WindowConfig
from services.index.holder import IndexHolder
from services.ingest.states import StateKeeper
from services.serving.shortterm import RegistryHeads
from services.store import layout
from services.store.records import StoredVector
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.front.conftest import Front, both, request_grid, store_address
from tests.refresh.support import add_events
from tests.serving.support import DB, NOW_MS, Running

pytestmark = pytest.mark.integration

COLUMNS = {"columns": [{"outcome": "buy", "horizon_ms": 86_400_000, "calibrated": True}]}
UNSPECIFIED, NEARLINE = pb.VECTOR_PART_UNSPECIFIED, pb.VECTOR_PART_NEARLINE
COMBINED, SHORT_TERM = pb.VECTOR_PART_COMBINED, pb.VECTOR_PART_SHORT_TERM
DELTA = ["h0", "h1", "h2"]  # events since the vector, ingest's delta covers them
STALE = ["h3"]  # a delta an APPLY has moved past: the state answers
STATE = ["h4", "h5"]  # events since the vector, a state and no delta
QUIET = ["h6", "h7", "h8", "h9"]  # nothing since the vector (h7: history, h6: -0.0)
WINDOW = ["h10"]  # events since the vector and no state: the window (read_recent.lua)
PLAIN = ["hp"]  # a layout-2 vector (no marker): nothing to fold
LOCAL = [*DELTA, *QUIET, *PLAIN, "nobody"]


@dataclass
class Headed:
    version: str
    dim: int
    near: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def headed(vstore: VectorStore, tiny_models: tuple[Path, str]) -> Iterator[Headed]:
    """The version active on db 9, users as the module's lists name them."""
    root, version = tiny_models
    head = ShortTermHead.load(root, version)
    assert head is not None and head.row_dim > 0
    dim = head.out_dim
    vstore.set_active(version)
    vstore.set_score_columns(version, json.dumps(COLUMNS))
    windows = WindowStore(vstore.client, WindowConfig())
    keeper = StateKeeper(vstore.versions, RegistryHeads(root), every_s=0.0, store=vstore)
    try:
        marked = [*DELTA, *STALE, *STATE, *QUIET, *WINDOW]
        add_events(windows, marked, 3, seed=61, states=keeper)
        rng = np.random.default_rng(9)
        near = {}
        for w in windows.read(marked):
            last = w.events[-1]
            near[w.user_id] = rng.normal(size=dim).astype(np.float32)
            if w.user_id == "h6":
                near["h6"][::2] = -0.0  # z + 0.0 is +0.0: the combined row is a sum
            for k in (1, 0) if w.user_id == "h7" else (0,):  # h7: an older value first
                vec = near[w.user_id] + 1 if k else near[w.user_id]  # (-0.0 + 0 is +0.0)
                vstore.put_batch([StoredVector(w.user_id, version, vec,
                                               NOW_MS - 1000 * k, 3, w.version,
                                               scores=np.array([0.25], np.float32),
                                               marker=(last.ts_ms, last.event_id))])  # fmt: skip
        near["hp"] = rng.normal(size=dim).astype(np.float32)
        vstore.put_batch([StoredVector("hp", version, near["hp"], NOW_MS, 3, 1,
                                       scores=np.array([0.5], np.float32))])  # fmt: skip
        add_events(windows, [*DELTA, *STALE, *STATE], 2, seed=62, offset0=1000, states=keeper)
        assert keeper.fold_deltas([*DELTA, *STALE]) == (4, 0)
        add_events(windows, STALE, 1, seed=63, offset0=2000, states=keeper)
        add_events(windows, WINDOW, 1, seed=64, offset0=3000)  # no state kept
        field = layout.delta_field(version)
        assert all(vstore.client.hget(layout.meta_key(u), field) for u in DELTA)
        assert not any(vstore.client.hget(layout.meta_key(u), field) for u in STATE)
        yield Headed(version, dim, near)
    finally:
        windows.close()


@pytest.fixture
def upstream(
    serve: Callable[..., Running], vstore: VectorStore, tiny_models: tuple[Path, str],
    headed: Headed,
) -> Running:  # fmt: skip
    """persona serve over db 9 with the registry's heads."""
    return serve(vstore, IndexHolder(), heads=RegistryHeads(tiny_models[0]), dim=headed.dim)


@pytest.fixture
def front(start_front: Callable[..., Front], upstream: Running, vstore: VectorStore) -> Front:
    # no -models (whatever PERSONA_MODELS says): the short-term state stays Python's
    return start_front(upstream.server.port, store_address(vstore), "-db", str(DB),
                       "-max-batch", "300", "-version-cache", "0s", "-models", "")  # fmt: skip


def _local(req: pb.GetEmbeddingsRequest) -> bool:
    """Whether the front answers `req` itself (once it knows the version has a head)."""
    if req.part == NEARLINE:
        return True
    ids = set(req.user_ids)
    return ids <= set(LOCAL) and not (req.include_scores and ids & set(DELTA))


def test_head_answers_equal_python(front: Front, upstream: Running, headed: Headed) -> None:
    # the first default request is forwarded: it teaches the dimension and the head
    first = both(front, upstream, pb.GetEmbeddingsRequest(user_ids=["h6"]))
    assert first.part == COMBINED
    mixes = [
        ["h0", "nobody", "h6", "h0", "hp", "h7", "h1", "h2", "h8", "h9"],
        [*QUIET, "nobody", "h6"],
        ["h1", *STATE],
        ["h0", *STALE],
        ["h6", *WINDOW],
    ]
    reqs = request_grid(mixes, headed.version, (0, 1))
    for req in reqs:
        got = both(front, upstream, req)
        want_part = NEARLINE if req.part == NEARLINE else req.part or COMBINED
        assert got.part == want_part
    local, forwarded = front.counts()
    assert (local, forwarded) == (sum(map(_local, reqs)), 1 + sum(not _local(r) for r in reqs))


def test_rows_are_nearline_plus_the_delta(
    front: Front, upstream: Running, headed: Headed
) -> None:  # fmt: skip
    ids = [*DELTA, *QUIET, "nobody"]
    both(front, upstream, pb.GetEmbeddingsRequest(user_ids=ids[:1]))  # teaches the head
    resp = both(front, upstream, pb.GetEmbeddingsRequest(user_ids=ids))
    short = both(front, upstream, pb.GetEmbeddingsRequest(user_ids=ids, part=SHORT_TERM))
    rows = np.frombuffer(resp.vectors, "<f4").reshape(len(ids), headed.dim)
    st = np.frombuffer(short.vectors, "<f4").reshape(len(ids), headed.dim)
    near = np.stack([headed.near[u] for u in ids[:-1]])
    assert list(resp.meta.short_term_events) == [2, 2, 2, 0, 0, 0, 0, 0]
    assert st[:3].any() and not st[3:].any()
    np.testing.assert_array_equal(rows[:-1], near + st[:-1])  # float32, bit for bit
    assert not rows[-1].any() and resp.statuses[-1] == pb.EMBEDDING_STATUS_NOT_FOUND
    h6 = rows[ids.index("h6")]
    assert np.signbit(headed.near["h6"][::2]).all()
    assert not np.signbit(h6[::2]).any(), "-0.0 + 0.0 is +0.0, as numpy adds"
    assert front.counts() == (2, 1)
