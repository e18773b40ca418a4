"""The Go front (front/go) rescoring, with `-models`, the rows the short-term head moves
(`embeddings._rescore`): an `include_scores` request where some row folded ingest's delta or
the short-term state is answered by the front itself, the newest scores of those rows the
version's outcome heads (`outcomes.json`) over nearline + delta computed in Go (within 1e-5
of Python's: `SCORES_TOL`; float16 answers within its rounding of them), the vectors within
1e-5 and every other field equal to the Python server's. A version without outcomes.json
keeps the stored scores, as Python's head without outcome heads does; one whose
outcomes.json the front does not read as numpy would (a null weight: NaN for numpy) is
forwarded (`scores_rescore`).
Windows, states and deltas written as ingest writes them, as in test_go_front_state.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from persona.v1 import service_pb2 as pb

from encoder.propensity import OutcomeHeads
from encoder.shortterm import ShortTermHead
from services.config import WindowConfig
from services.index.holder import IndexHolder
from services.ingest.states import StateKeeper
from services.serving.shortterm import RegistryHeads
from services.store.records import StoredVector
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.front.conftest import Front, close, counts, request_grid, store_address, walk
from tests.refresh.support import add_events
from tests.serving.support import DB, NOW_MS, Running

pytestmark = pytest.mark.integration

NEARLINE, SHORT_TERM = pb.VECTOR_PART_NEARLINE, pb.VECTOR_PART_SHORT_TERM
STATE = ["s0"]  # one APPLY since the vector, no delta: the state answers
HIST = ["s1"]  # the state, and an older vector (history, its scores stored)
DELTA = ["d0", "d1"]  # ingest's delta answers (d1 stored without scores)
QUIET = ["q0"]  # nothing since the vector
WINDOW = ["w0"]  # events since the vector and no state: the window (read_recent.lua)
FOLDED = [*STATE, *HIST, *DELTA]
LOCAL = [*FOLDED, *QUIET, "nobody"]
# numpy's float32 product of one or two rows (gemv, OpenBLAS's small-matrix kernels) sums
# in another order than of three or more (the front's): Python's own scores of one vector
# differ by a few 1e-6 from one batch size to another
SCORES_TOL = 1e-5


@dataclass
class Data:
    root: Path
    version: str
    dim: int
    heads: OutcomeHeads
    stored: dict[str, np.ndarray]  # each user's newest stored scores (float16 as read)


@pytest.fixture(scope="module")
def data(vstore: VectorStore, tiny_models: tuple[Path, str]) -> Iterator[Data]:
    """A tiny trained version with its head and outcome heads, active on db 9, its score
    columns recorded, users as named above."""
    root, version = tiny_models
    head = ShortTermHead.load(root, version)
    assert head is not None and head.outcomes is not None
    heads = head.outcomes
    n = len(heads.score_columns())
    assert n > 1
    vstore.set_active(version)
    vstore.set_score_columns(version, heads.columns_json())
    windows = WindowStore(vstore.client, WindowConfig())
    keeper = StateKeeper(vstore.versions, RegistryHeads(root), every_s=0.0, store=vstore)
    try:
        marked = [*FOLDED, *QUIET, *WINDOW]
        add_events(windows, marked, 3, seed=81, states=keeper)
        rng = np.random.default_rng(19)
        stored = {}
        for w in windows.read(marked):
            last = w.events[-1]
            near = rng.normal(size=head.out_dim).astype(np.float32)
            for k in (1, 0) if w.user_id in HIST else (0,):  # an older value first
                scores = None
                if w.user_id != "d1":
                    scores = rng.uniform(size=n).astype(np.float16).astype(np.float32)
                    stored[w.user_id] = scores
                vstore.put_batch([StoredVector(w.user_id, version, near + k, NOW_MS - 1000 * k,
                                               3, w.version - k, scores=scores,
                                               marker=(last.ts_ms, last.event_id))])  # fmt: skip
        add_events(windows, FOLDED, 2, seed=82, offset0=1000, states=keeper)
        assert keeper.fold_deltas(DELTA) == (2, 0)
        add_events(windows, WINDOW, 1, seed=84, offset0=3000)  # no state kept
        yield Data(root, version, head.out_dim, heads, stored)
    finally:
        windows.close()


@pytest.fixture
def serve_and_front(
    serve: Callable[..., Running], start_front: Callable[..., Front], vstore: VectorStore,
    data: Data,
) -> Callable[[Path], tuple[Running, Front]]:  # fmt: skip
    """`start(models)`: persona serve with the heads of registry `models` and the front
    before it with `-models models` (both stopped after the test)."""

    def start(models: Path) -> tuple[Running, Front]:
        up = serve(vstore, IndexHolder(), heads=RegistryHeads(models), dim=data.dim)
        front = start_front(up.server.port, store_address(vstore), "-db", str(DB), "-max-batch",
                            "300", "-version-cache", "0s", "-metrics-listen", "127.0.0.1:0",
                            "-models", str(models))  # fmt: skip
        return up, front

    return start


def _local(req: pb.GetEmbeddingsRequest) -> bool:
    """Whether the front answers `req` itself (once it knows the version has a head)."""
    return req.part == NEARLINE or set(req.user_ids) <= set(LOCAL)


def test_rescored_answers_equal_python(
    serve_and_front: Callable[[Path], tuple[Running, Front]], data: Data
) -> None:  # fmt: skip
    upstream, front = serve_and_front(data.root)
    # teaches dim and head
    close(front, upstream, pb.GetEmbeddingsRequest(user_ids=QUIET), SCORES_TOL)
    mixes = [
        [*STATE, "q0", "nobody", "s0"],
        [*DELTA, *HIST, "nobody", *STATE],
        [*HIST, "q0"],
        [*STATE, *WINDOW],
    ]
    reqs = request_grid(mixes, data.version, (0, 2))
    before, _ = counts(front)
    local, reasons = walk(front, reqs, lambda req: close(front, upstream, req, SCORES_TOL), _local)
    assert local - before == sum(map(_local, reqs)) and reasons["scores_rescore"] == 0
    assert sum(r.include_scores and r.part != NEARLINE and _local(r) for r in reqs) > 20


def test_moved_rows_get_the_outcome_heads_scores(
    serve_and_front: Callable[[Path], tuple[Running, Front]], data: Data
) -> None:  # fmt: skip
    upstream, front = serve_and_front(data.root)
    ids = [*FOLDED, *QUIET, "nobody"]
    close(front, upstream, pb.GetEmbeddingsRequest(user_ids=QUIET), SCORES_TOL)  # teaches the head
    n = len(data.heads.score_columns())
    for part in (pb.VECTOR_PART_COMBINED, SHORT_TERM):
        req = pb.GetEmbeddingsRequest(user_ids=ids, part=part, include_scores=True,
                                      history_depth=1)  # fmt: skip
        got = close(front, upstream, req, SCORES_TOL)
        comb = close(front, upstream, replace_part(req), SCORES_TOL)
        rows = np.frombuffer(comb.vectors, "<f4").reshape(len(ids), data.dim)
        scores = np.frombuffer(got.scores, "<f4").reshape(len(ids), n)
        k = len(FOLDED)
        assert all(got.meta.short_term_events[:k]) and not any(got.meta.short_term_events[k:])
        want = data.heads.scores(rows[:k]).astype(np.float32)  # over nearline + delta
        np.testing.assert_allclose(scores[:k], want, rtol=0, atol=1e-6)
        assert not np.allclose(scores[0], data.stored["s0"], atol=1e-3)  # not the stored ones
        np.testing.assert_array_equal(scores[k], data.stored["q0"])  # nothing moved: stored
        assert np.isnan(scores[k + 1]).all()  # not found
        hist = np.frombuffer(got.history_scores, "<f4")  # history: stored, never rescored
        assert hist.shape == (n,) and np.isfinite(hist).all()
    local, reasons = counts(front)
    assert local == 4 and sum(reasons.values()) == 1


def replace_part(req: pb.GetEmbeddingsRequest) -> pb.GetEmbeddingsRequest:
    """`req` asking for the COMBINED part."""
    out = pb.GetEmbeddingsRequest()
    out.CopyFrom(req)
    out.part = pb.VECTOR_PART_COMBINED
    return out


@pytest.mark.parametrize("damage", ["removed", "null_weight"])
def test_outcome_heads_missing_or_not_read(
    serve_and_front: Callable[[Path], tuple[Running, Front]], data: Data, tmp_path: Path,
    damage: str,
) -> None:  # fmt: skip
    """Removed: Python's head has no outcome heads, the stored scores stay (local); a null
    weight (numpy reads NaN, the front refuses): forwarded, reason scores_rescore."""
    copy = tmp_path / "models"
    shutil.copytree(data.root / data.version, copy / data.version)
    path = copy / data.version / "outcomes.json"
    path.chmod(0o644)
    if damage == "removed":
        path.unlink()
    else:
        d = json.loads(path.read_text())
        d["weight"][0][0] = None
        path.write_text(json.dumps(d))
    upstream, front = serve_and_front(copy)
    close(front, upstream, pb.GetEmbeddingsRequest(user_ids=QUIET), SCORES_TOL)  # teaches the head
    ids = [*FOLDED, *QUIET, "nobody"]
    reqs = [pb.GetEmbeddingsRequest(user_ids=ids, include_scores=True, part=part, encoding=enc)
            for part in (pb.VECTOR_PART_UNSPECIFIED, SHORT_TERM)
            for enc in (pb.VECTOR_ENCODING_UNSPECIFIED, pb.VECTOR_ENCODING_FLOAT16)]  # fmt: skip
    for req in reqs:
        got = close(front, upstream, req, SCORES_TOL)
        if damage == "removed" and req.encoding != pb.VECTOR_ENCODING_FLOAT16:
            want = np.stack([data.stored.get(u, np.full(len(data.stored["q0"]), np.nan))
                             for u in ids])  # fmt: skip
            np.testing.assert_array_equal(np.frombuffer(got.scores, "<f4").reshape(want.shape),
                                          want)  # fmt: skip
    close(front, upstream, pb.GetEmbeddingsRequest(user_ids=ids), SCORES_TOL)  # no scores: local
    local, reasons = counts(front)
    if damage == "removed":
        assert local == 5 and sum(reasons.values()) == 1
    else:
        assert local == 1 and reasons["scores_rescore"] == 4
    err = front.stop()
    if damage == "removed":
        assert "no outcomes.json" in err, err
    else:
        assert err.count("outcome heads not read") == 1, err
