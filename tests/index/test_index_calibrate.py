"""The recall-driven search setting (`calibrate.py`): its pure parts, and on a real IVF that
the setting it picks is the cheapest reaching the target on its sample."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pytest

from services.index.calibrate import (
    Calibration,
    _drop,
    calibrate,
    exact_neighbours,
    ivf_rank_guess,
    recall_at,
)
from services.index.exact import exact_knn
from services.index.synthetic import ClusteredSpec, clustered_unit_vectors


def test_drop_removes_each_querys_own_id_else_the_last() -> None:
    found = np.array([[7, 3, 5], [2, 4, 9], [1, 8, 6]])
    own = np.array([3, 9, 0])  # in the middle, at the end, absent
    assert _drop(found, own, 2).tolist() == [[7, 5], [2, 4], [1, 8]]


def test_recall_at_counts_shared_ids_row_by_row() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 1], [8, 0, 0, 0]])  # 3 of 4, 1 of 4; order does not matter
    assert recall_at(found, truth) == pytest.approx(4 / 8)


def test_param_for_takes_the_smallest_calibrated_k_at_or_above() -> None:
    cal = Calibration(params={10: 3, 50: 6}, recall={10: 0.96, 50: 0.95}, sample=100, seconds=0)
    assert [cal.param_for(k) for k in (1, 10, 11, 50, 400)] == [3, 3, 6, 6, 6]


def test_exact_neighbours_leave_out_the_query_itself() -> None:
    vecs, _ = clustered_unit_vectors(2_000, 0, ClusteredSpec(dim=16, n_clusters=20))
    rows = np.arange(0, 2_000, 100)
    got = exact_neighbours(vecs, rows, 5)  # (20, 5)
    assert got.shape == (20, 5) and not (got == rows[:, None]).any()
    scores = np.einsum("sd,skd->sk", vecs[rows], vecs[got])
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


@pytest.mark.parametrize(("n", "k"), [(40_000, 7), (200_000, 1), (40, 40), (3, 1)])
def test_exact_knn_is_the_brute_force_top_k(n: int, k: int) -> None:
    """Across the blocks' edges (16,384 base rows, 128 queries): the top k by a full sort
    of every inner product, best first (200,000 x k=1: candidates merged on the way)."""
    rng = np.random.default_rng(n)
    base = rng.standard_normal((n, 8)).astype(np.float32)
    queries = rng.standard_normal((300, 8)).astype(np.float32)
    got = exact_knn(queries, base, k)
    scores = queries @ base.T  # (300, n)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # the k best, any order
    want = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1)), 1)
    assert got.shape == (300, k) and (got >= 0).all()
    # the same scores in the same order (two rows a rounding apart may trade places)
    np.testing.assert_allclose(np.take_along_axis(scores, got, 1),
                               np.take_along_axis(scores, want, 1), atol=1e-5)  # fmt: skip
    assert (got == want).mean() > 0.99
    assert all(len(set(r)) == k for r in got.tolist())  # no row twice


def ivf(vecs: np.ndarray, nlist: int) -> tuple[Any, np.ndarray]:
    index: Any = faiss.index_factory(vecs.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vecs)
    index.add(vecs)
    return index, index.quantizer.search(vecs, 1)[1][:, 0]


@pytest.mark.parametrize("target", [0.8, 0.95, 0.99])
def test_ivf_setting_is_the_cheapest_reaching_the_target(target: float) -> None:
    vecs, _ = clustered_unit_vectors(20_000, 0, ClusteredSpec(dim=32, n_clusters=100, seed=2))
    nlist = 128
    index, list_of = ivf(vecs, nlist)
    ids = np.arange(len(vecs))

    def search_at(q: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        return index.search(q, k, params=faiss.SearchParametersIVF(nprobe=nprobe))[1]  # type: ignore[call-arg]

    guess = ivf_rank_guess(index.quantizer, list_of, nlist, target)
    kw: dict[str, Any] = {"target": target, "ks": (10, 50), "sample": 300, "most": nlist}
    cal = calibrate(vecs, ids, search_at, first=guess, **kw)
    assert cal.sample == 300 and set(cal.params) == {10, 50}
    assert cal.params[10] <= cal.params[50]
    for k in (10, 50):
        assert cal.recall[k] >= target
        if cal.params[k] > 1:  # one list fewer falls short on the same sample
            p = cal.params[k] - 1
            fewer = calibrate(vecs, ids, search_at, first=p, **kw | {"most": p, "ks": (k,)})
            assert fewer.recall[k] < target
