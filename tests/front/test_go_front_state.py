"""The Go front (front/go) answering from the short-term state (`s<ver>`, LAYOUT.md
"Short-term state"): with `-models`, users whose new events only the state accounts for are
answered by the front itself, their rows the head's `delta_rows` computed in Go (vectors
within 1e-5 of Python's: OpenBLAS sums in its own order), every other field of the answer
equal to the Python server's. A user whose state does not answer (no state, an APPLY's
entry missing) needs the window: the request is forwarded. A version whose rows parity
sample (`shortterm_rows_parity.jsonl`) is missing or does not match the head is never
served from its state (reason `head_unverified`). Windows and states written as ingest
writes them (`add_events` with a `StateKeeper`), deltas by `StateKeeper.fold_deltas`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from persona.v1 import service_pb2 as pb

from encoder.shortterm import ROWS_PARITY_FILE, ShortTermHead
from services.config import WindowConfig
from services.index.holder import IndexHolder
from services.ingest.states import StateKeeper
from services.serving.shortterm import RegistryHeads
from services.store import layout
from services.store.records import StoredVector
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.front.conftest import Front, close, counts, request_grid, store_address, walk
from tests.refresh.support import add_events
from tests.serving.support import DB, NOW_MS, Running

pytestmark = pytest.mark.integration

UNSPECIFIED, NEARLINE = pb.VECTOR_PART_UNSPECIFIED, pb.VECTOR_PART_NEARLINE
COMBINED, SHORT_TERM = pb.VECTOR_PART_COMBINED, pb.VECTOR_PART_SHORT_TERM
STATE = ["s0", "s1"]  # one APPLY since the vector, no delta: the state answers
STALE = ["s2"]  # a delta an APPLY has moved past: the state (two APPLYs) answers
HIST = ["s3"]  # the state, and an older vector (history)
DELTA = ["d0"]  # ingest's delta answers
QUIET = ["q0"]  # nothing since the vector
WINDOW = ["w0"]  # events since the vector and no state: the window (read_recent.lua)
BROKEN = ["b0"]  # an APPLY's entry missing from the state: the window
FOLDED = [*STATE, *STALE, *HIST, *DELTA]
LOCAL = [*FOLDED, *QUIET, "nobody"]
SINCE = {"s0": 2, "s1": 2, "s2": 3, "s3": 2, "d0": 2}  # events since each vector


@dataclass
class Data:
    root: Path
    version: str
    dim: int
    near: dict[str, np.ndarray]
    newest: dict[str, int]  # each user's newest event ts_ms


@pytest.fixture(scope="module")
def data(vstore: VectorStore, tiny_models: tuple[Path, str]) -> Iterator[Data]:
    """A tiny trained version with its head, active on db 9, users as named above."""
    root, version = tiny_models
    head = ShortTermHead.load(root, version)
    assert head is not None and head.row_dim > 0
    dim = head.out_dim
    vstore.set_active(version)
    windows = WindowStore(vstore.client, WindowConfig())
    keeper = StateKeeper(vstore.versions, RegistryHeads(root), every_s=0.0, store=vstore)
    try:
        marked = [*FOLDED, *QUIET, *WINDOW, *BROKEN]
        add_events(windows, marked, 3, seed=71, states=keeper)
        rng = np.random.default_rng(17)
        near = {}
        for w in windows.read(marked):
            last = w.events[-1]
            near[w.user_id] = rng.normal(size=dim).astype(np.float32)
            for k in (1, 0) if w.user_id in HIST else (0,):  # an older value first
                vstore.put_batch([StoredVector(w.user_id, version, near[w.user_id] + k,
                                               NOW_MS - 1000 * k, 3, w.version - k,
                                               scores=np.array([0.25], np.float32),
                                               marker=(last.ts_ms, last.event_id))])  # fmt: skip
        add_events(windows, [*FOLDED, *BROKEN], 2, seed=72, offset0=1000, states=keeper)
        assert keeper.fold_deltas([*DELTA, *STALE]) == (2, 0)
        add_events(windows, STALE, 1, seed=73, offset0=2000, states=keeper)
        add_events(windows, WINDOW, 1, seed=74, offset0=3000)  # no state kept
        state = layout.state_field(version)
        key = layout.meta_key(BROKEN[0])
        blob = vstore.client.hget(key, state)
        entry = layout.STATE_ENTRY.size + 4 * head.row_dim
        assert blob and len(blob) == 2 * entry
        vstore.client.hset(key, state, blob[:entry])  # one of its APPLY's two entries
        delta = layout.delta_field(version)
        assert all(vstore.client.hget(layout.meta_key(u), delta) for u in [*DELTA, *STALE])
        assert not any(vstore.client.hget(layout.meta_key(u), delta) for u in STATE)
        newest = {w.user_id: w.events[-1].ts_ms for w in windows.read(marked)}
        yield Data(root, version, dim, near, newest)
    finally:
        windows.close()


@pytest.fixture
def upstream(serve: Callable[..., Running], vstore: VectorStore, data: Data) -> Running:
    """persona serve over db 9 with the registry's heads."""
    return serve(vstore, IndexHolder(), heads=RegistryHeads(data.root), dim=data.dim)


@pytest.fixture
def started(
    start_front: Callable[..., Front], upstream: Running, vstore: VectorStore
) -> Callable[[Path], Front]:  # fmt: skip
    def start(models: Path) -> Front:
        return start_front(upstream.server.port, store_address(vstore), "-db", str(DB),
                           "-max-batch", "300", "-version-cache", "0s", "-metrics-listen",
                           "127.0.0.1:0", "-models", str(models))  # fmt: skip

    return start


def _local(req: pb.GetEmbeddingsRequest) -> bool:
    """Whether the front answers `req` itself (once it knows the version has a head)."""
    if req.part == NEARLINE:
        return True
    return set(req.user_ids) <= set(LOCAL)  # scores too: rescored (test_go_front_scores.py)


def test_state_answers_equal_python(
    started: Callable[[Path], Front], upstream: Running, data: Data
) -> None:  # fmt: skip
    front = started(data.root)
    close(front, upstream, pb.GetEmbeddingsRequest(user_ids=["q0"]))  # teaches dim and head
    mixes = [
        [*STATE, "q0", "nobody", "s0"],
        [*STALE, *DELTA, *HIST, "nobody", *STATE],
        [*HIST, *STATE],
        [*STATE, *WINDOW],
        [*BROKEN, "q0"],
    ]
    reqs = request_grid(mixes, data.version, (0, 2))
    local, reasons = counts(front)
    assert local == 0 and sum(reasons.values()) == 1

    def answer(req: pb.GetEmbeddingsRequest) -> None:
        got = close(front, upstream, req)
        assert got.part == (NEARLINE if req.part == NEARLINE else req.part or COMBINED)

    local, reasons = walk(front, reqs, answer, _local)
    assert local == sum(map(_local, reqs)) > 0
    assert reasons["head_unverified"] == 0 and reasons["scores_rescore"] == 0


def test_state_rows_are_nearline_plus_the_heads_delta(
    started: Callable[[Path], Front], upstream: Running, data: Data
) -> None:  # fmt: skip
    front = started(data.root)
    ids = [*STATE, *STALE, *HIST, *DELTA, *QUIET, "nobody"]
    close(front, upstream, pb.GetEmbeddingsRequest(user_ids=ids[:1]))  # teaches the head
    resp = close(front, upstream, pb.GetEmbeddingsRequest(user_ids=ids, history_depth=1))
    short = close(front, upstream, pb.GetEmbeddingsRequest(user_ids=ids, part=SHORT_TERM))
    rows = np.frombuffer(resp.vectors, "<f4").reshape(len(ids), data.dim)
    st = np.frombuffer(short.vectors, "<f4").reshape(len(ids), data.dim)
    near = np.stack([data.near[u] for u in ids[:-1]])
    assert list(resp.meta.short_term_events) == [SINCE.get(u, 0) for u in ids]
    assert list(resp.meta.newest_event_ms) == [data.newest.get(u, 0) for u in ids]
    assert st[:5].any(axis=1).all() and not st[5:].any()
    np.testing.assert_array_equal(rows[:-1], near + st[:-1])  # the front's own sum, exactly
    assert list(resp.history_counts) == [0, 0, 0, 1, 0, 0, 0]
    hist = np.frombuffer(resp.history_vectors, "<f4")
    np.testing.assert_array_equal(hist, data.near["s3"] + 1)  # history stays nearline
    assert counts(front)[0] == 2


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_an_unverified_head_is_not_served(
    started: Callable[[Path], Front], upstream: Running, data: Data, tmp_path: Path,
    damage: str,
) -> None:  # fmt: skip
    copy = tmp_path / "models"
    shutil.copytree(data.root / data.version, copy / data.version)
    path = copy / data.version / ROWS_PARITY_FILE
    if damage == "deleted":
        path.unlink()
    else:
        path.chmod(0o644)
        lines = path.read_text().splitlines()
        case = json.loads(lines[0])
        case["delta"][0] += 1e-3
        path.write_text("\n".join([json.dumps(case), *lines[1:]]) + "\n")
    front = started(copy)
    close(front, upstream, pb.GetEmbeddingsRequest(user_ids=["q0"]))  # teaches the head
    for _ in range(3):
        close(front, upstream, pb.GetEmbeddingsRequest(user_ids=STATE))
    close(front, upstream, pb.GetEmbeddingsRequest(user_ids=[*DELTA, *QUIET]))  # no state
    local, reasons = counts(front)
    assert local == 1 and reasons["head_unverified"] == 3 and reasons["short_term_state"] == 0
    err = front.stop()
    assert err.count("short-term head not used") == 1, err
    assert ROWS_PARITY_FILE in err
