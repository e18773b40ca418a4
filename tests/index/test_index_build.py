"""Building the index: k-means that stops once it stops improving (`kmeans.py`), the codes
trained on the full assignment's lists (`building.py`), and the
search setting measured on a small sample before the swap, on the full one after
(`tuning.py`, `LookalikeIndex.rebuild`)."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pytest

from services.index import IndexConfig, LookalikeIndex
from services.index.building import _train_codes
from services.index.kmeans import spherical_kmeans
from services.index.synthetic import ClusteredSpec, clustered_unit_vectors
from services.index.tuning import Tuner


def test_kmeans_without_a_tolerance_is_faiss_ivf_training() -> None:
    vecs, _ = clustered_unit_vectors(20_000, 0, ClusteredSpec(dim=16, n_clusters=50, seed=4))
    ivf: Any = faiss.index_factory(16, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(vecs)
    got = spherical_kmeans(vecs, 64, max_iters=ivf.cp.niter, tol=0.0)
    assert got.iterations == ivf.cp.niter == len(got.objective)
    np.testing.assert_allclose(got.centroids, ivf.quantizer.reconstruct_n(0, 64), atol=1e-6)


def test_codes_trained_on_the_assignment_are_faiss_ivf_sq_training() -> None:
    """IVF-SQ's 8-bit ranges from the sample's residuals to the lists the build already
    assigned equal those of faiss's `train`, which searches the sample against them again."""
    vecs, _ = clustered_unit_vectors(20_000, 0, ClusteredSpec(dim=16, n_clusters=50, seed=4))
    centroids = vecs[:64].copy()
    want: Any = faiss.index_factory(16, "IVF64,SQ8", faiss.METRIC_INNER_PRODUCT)
    want.quantizer.add(centroids)
    want.train(vecs)
    got: Any = faiss.index_factory(16, "IVF64,SQ8", faiss.METRIC_INNER_PRODUCT)
    got.quantizer.add(centroids)
    _train_codes(got, centroids, vecs, got.quantizer.search(vecs, 1)[1][:, 0])
    ranges = faiss.vector_to_array(got.sq.trained)
    assert len(ranges) == 2 * 16 and np.ptp(ranges) > 0  # a min and a range a component
    np.testing.assert_array_equal(ranges, faiss.vector_to_array(want.sq.trained))


@pytest.mark.parametrize("spread", [0.3, 1.5])  # tight clusters settle fast, wide ones slower
def test_kmeans_stops_at_the_first_iteration_that_gained_less_than_tol(spread: float) -> None:
    vecs, _ = clustered_unit_vectors(
        20_000, 0, ClusteredSpec(dim=16, n_clusters=50, spread=spread, seed=4)
    )
    full = spherical_kmeans(vecs, 64, max_iters=25, tol=0.0)
    tol = 2e-3
    got = spherical_kmeans(vecs, 64, max_iters=25, tol=tol)
    gains = np.diff(full.objective) / np.abs(full.objective[1:])
    below = np.flatnonzero(gains < tol)
    want = int(below[0]) + 2 if len(below) else 25  # gains[i]: iteration i + 2 over i + 1
    assert got.iterations == want
    assert got.objective == full.objective[:want]  # the same iterations, only fewer
    assert np.allclose(np.linalg.norm(got.centroids, axis=1), 1.0, atol=1e-5)


def test_tight_clusters_stop_before_the_most_iterations() -> None:
    vecs, _ = clustered_unit_vectors(
        20_000, 0, ClusteredSpec(dim=16, n_clusters=64, spread=0.1, seed=4)
    )
    got = spherical_kmeans(vecs, 64, max_iters=10, tol=1e-3)
    assert got.iterations < 10


def loaded(n: int = 3_000, **kw: Any) -> LookalikeIndex:
    vecs, _ = clustered_unit_vectors(n, 0, ClusteredSpec(dim=16, n_clusters=40, seed=5))
    cfg = IndexConfig(dim=16, kind="ivf", ivf_nlist=16, gpu="off", **kw)
    idx = LookalikeIndex(cfg)
    idx.upsert([f"u{i}" for i in range(n)], vecs)
    return idx


def test_rebuild_serves_after_the_small_sample_and_then_installs_the_full_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idx = loaded()
    seen: list[tuple[int, bool, bool]] = []  # (sample, swapped in yet, searchable meanwhile)
    real = Tuner.measure

    def measure(self: Tuner, sample: int, *args: Any) -> Any:
        swapped = idx.built is self.built
        searchable = swapped and len(idx.search_arrays(self.vectors[:3], 5).ids) == 3
        seen.append((sample, swapped, searchable))
        return real(self, sample, *args)

    monkeypatch.setattr(Tuner, "measure", measure)
    info = idx.rebuild()
    assert seen == [(100, False, False), (1_000, True, True)]
    cal = idx.built.calibration
    assert cal is not None and cal.sample == 1_000 and info.params == cal.params
    assert 0 < info.serving_s <= info.seconds and info.kmeans_iterations >= 2
    p = {k: v.nprobe for k, v in idx.built.params.items()}
    assert p == cal.params  # what searches use now is the full sample's setting


def test_a_failed_full_measure_leaves_the_first_setting_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idx = loaded()
    real = Tuner.measure

    def measure(self: Tuner, sample: int, *args: Any) -> Any:
        if sample == 1_000:
            raise RuntimeError("planted")
        return real(self, sample, *args)

    monkeypatch.setattr(Tuner, "measure", measure)
    info = idx.rebuild()
    cal = idx.built.calibration
    assert cal is not None and cal.sample == 100 and info.params == cal.params
    assert idx.search(np.ones((1, 16), np.float32), 3)[0]


def test_a_sample_no_larger_than_the_first_measures_once(monkeypatch: pytest.MonkeyPatch) -> None:
    idx = loaded(recall_sample=50, recall_sample_first=100)
    samples: list[int] = []
    real = Tuner.measure

    def measure(self: Tuner, sample: int, *args: Any) -> Any:
        samples.append(sample)
        return real(self, sample, *args)

    monkeypatch.setattr(Tuner, "measure", measure)
    idx.rebuild()
    assert samples == [50]


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"ivf_kmeans_tol": -0.1}, "ivf_kmeans_tol"), ({"recall_sample_first": 5}, "recall_sample")],
)
def test_build_settings_are_checked(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IndexConfig(**kw)
