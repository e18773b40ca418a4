"""The live recall probe (issue #18 item 5a): recall@k of the index in service against exact
search, on a sample of its own vectors, set as a gauge by a thread that stops cleanly."""

from __future__ import annotations

import threading
import time

import numpy as np
from prometheus_client import CollectorRegistry

from services.index.ann import LookalikeIndex
from services.index.config import IndexConfig
from services.index.holder import IndexHolder, ServedIndex
from services.index.metrics import index_metrics
from services.index.prior import PriorIndex
from services.index.probe import RecallProbe, exact_threshold, live_recall

DIM = 16
LIVE = "persona_index_live_recall_ratio"


def _filled(cfg: IndexConfig, n: int, seed: int = 0) -> tuple[LookalikeIndex, np.ndarray]:
    vecs = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    index = PriorIndex(cfg)
    index.upsert([f"u{i}" for i in range(n)], vecs)
    index.rebuild()
    return index, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _id_recall(index: LookalikeIndex, unit: np.ndarray, rows: np.ndarray, k: int) -> float:
    """The id-based recall@k (the build's measure): true k neighbours other than the query."""
    q = unit[rows]
    truth = np.argsort(-(q @ unit.T), axis=1)[:, 1 : k + 1]  # (S, k), self dropped
    found = index.search_arrays(q, k + 1).ids  # (S, k+1)
    hits = [
        len({f"u{t}".encode() for t in truth[i]} & set(found[i].tolist())) for i in range(len(q))
    ]
    return float(np.mean(hits) / k)


def test_exact_threshold_over_chunks_matches_a_full_sort() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(3000, 8)).astype(np.float32)
    q = v[:5]
    import services.index.probe as probe

    old, probe.CHUNK = probe.CHUNK, 700  # several chunks
    try:
        got = exact_threshold(q, v, 10)
    finally:
        probe.CHUNK = old
    want = -np.sort(-(q @ v.T), axis=1)[:, 10]
    assert np.allclose(got, want)


def test_an_exact_index_has_recall_1() -> None:
    index, _ = _filled(IndexConfig(dim=DIM, kind="flat", gpu="off"), 2000)
    got = live_recall(index, 64, (10, 50), np.random.default_rng(0))
    assert got == {10: 1.0, 50: 1.0}


def test_a_starved_ivf_index_shows_its_recall_as_the_id_measure_does() -> None:
    cfg = IndexConfig(dim=DIM, kind="ivf", ivf_nprobe=1, gpu="off")
    index, unit = _filled(cfg, 4000)
    assert index.kind == "ivf"
    got = live_recall(index, 200, (10,), np.random.default_rng(3))
    rows = np.random.default_rng(3).choice(4000, size=200, replace=False)
    want = _id_recall(index, unit, rows, 10)
    assert got[10] < 0.9  # one list of ~100 probed on unclustered vectors
    assert abs(got[10] - want) < 0.02, (got, want)


def test_ks_at_or_above_the_size_and_no_index_are_left_out() -> None:
    index, _ = _filled(IndexConfig(dim=DIM, kind="flat", gpu="off"), 30)
    assert set(live_recall(index, 10, (10, 50), np.random.default_rng(0))) == {10}
    m = index_metrics(CollectorRegistry())
    assert RecallProbe(IndexHolder(), m.live_recall, (10,), 1.0, 8).probe() == {}


def test_the_probe_thread_sets_the_gauge_and_stops() -> None:
    reg = CollectorRegistry()
    m = index_metrics(reg)
    index, _ = _filled(IndexConfig(dim=DIM, kind="flat", gpu="off"), 500)
    probe = RecallProbe(IndexHolder(ServedIndex("v1", index)), m.live_recall, (10,), 0.05, 16)
    probe.start()
    try:
        deadline = time.monotonic() + 60
        while reg.get_sample_value(LIVE, {"k": "10"}) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reg.get_sample_value(LIVE, {"k": "10"}) == 1.0
    finally:
        probe.stop()
    assert not any(t.name == "recall-probe" for t in threading.enumerate())
