"""LookalikeIndex unit tests: small data, every structure, writes, filters, validation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.index import IndexConfig, LookalikeIndex
from services.index.synthetic import ClusteredSpec, clustered_unit_vectors, normalise

DIM = 16
KINDS = ["flat", "ivf", "hnsw"]


def make(kind: str = "flat", **kw: object) -> LookalikeIndex:
    kw = {"ivf_nlist": 8, "ivf_nprobe": 8} | kw
    cfg = IndexConfig(dim=DIM, kind=kind, gpu="off", **kw)  # type: ignore[arg-type]
    return LookalikeIndex(cfg)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    return normalise(rng.standard_normal((n, DIM)))


def loaded(kind: str, n: int = 500, seed: int = 0) -> tuple[LookalikeIndex, np.ndarray]:
    vecs = unit(np.random.default_rng(seed), n)
    idx = make(kind, ivf_nlist=64 if n > 5_000 else 8)
    idx.upsert([f"u{i}" for i in range(n)], vecs)
    idx.rebuild()  # trains IVF / builds HNSW over the loaded data
    assert idx.kind == kind
    return idx, vecs


@pytest.mark.parametrize("kind", KINDS)
def test_self_is_nearest_with_cosine_score(kind: str) -> None:
    idx, vecs = loaded(kind)
    res = idx.search(vecs[:20], k=3)
    for i, hits in enumerate(res):
        assert hits[0][0] == f"u{i}"
        assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert idx.size == 500


@pytest.mark.parametrize("kind", KINDS)
def test_upsert_replaces_and_delete_removes(kind: str) -> None:
    idx, vecs = loaded(kind)
    idx.upsert(["u0"], vecs[1:2])  # u0 now sits where u1 is
    assert np.allclose(idx.vector_of("u0"), vecs[1])
    both = idx.vector_of("u0") + idx.vector_of("u2")  # type: ignore[operator]
    assert np.allclose(idx.sum_of(["u0", "nobody", "u2"]), both)
    assert not idx.sum_of(["nobody"]).any() and idx.sum_of([]).shape == (idx.dim,)
    assert idx.search(vecs[0:1], k=1)[0][0][0] != "u0"  # its old vector is gone
    assert {u for u, _ in idx.search(vecs[1:2], k=2)[0]} == {"u0", "u1"}
    assert idx.delete(["u1", "nobody"]) == 1
    assert idx.vector_of("u1") is None and "u1" not in idx
    assert all(u != "u1" for u, _ in idx.search(vecs[1:2], k=10)[0])
    assert idx.size == 499
    idx.upsert(["new"], vecs[2:3] * 3.0)  # normalised on the way in
    assert np.allclose(idx.vector_of("new"), vecs[2], atol=1e-6)
    assert {u for u, _ in idx.search(vecs[2:3], k=2)[0]} == {"u2", "new"}


@pytest.mark.parametrize("kind", KINDS)
def test_rebuild_keeps_contents(kind: str) -> None:
    idx, vecs = loaded(kind)
    idx.upsert(["u3"], unit(np.random.default_rng(9), 1))
    idx.delete(["u5"])
    before = idx.search(vecs[:50], k=5)
    info = idx.rebuild()
    assert info.size == idx.size == 499 and info.kind == kind
    after = idx.search(vecs[:50], k=5)
    assert [[u for u, _ in hits] for hits in after] == [[u for u, _ in hits] for hits in before]
    assert np.allclose([[s for _, s in h] for h in after], [[s for _, s in h] for h in before])


def test_exclude_and_min_score() -> None:
    idx, vecs = loaded("flat")
    full = idx.search(vecs[:1], k=10)[0]
    drop = {full[0][0], full[3][0]}
    res = idx.search(vecs[:1], k=10, exclude=drop)[0]
    assert len(res) == 10 and not drop & {u for u, _ in res}
    assert res[:8] == [h for h in full if h[0] not in drop]
    cut = full[4][1]
    assert idx.search(vecs[:1], k=10, min_score=cut)[0] == full[:5]
    assert idx.search(vecs[:1], k=10, min_score=1.01)[0] == []


def test_many_hidden_entries_still_fill_k() -> None:
    idx, vecs = loaded("hnsw", n=300)
    idx.upsert([f"u{i}" for i in range(200)], vecs[200:300].repeat(2, axis=0))
    assert idx._built.n_stale == 200  # noqa: SLF001  # HNSW cannot remove: the old vectors are hidden
    assert not idx.needs_rebuild()  # under the floor of 1,000 hidden entries
    res = idx.search(vecs[250:251], k=5)[0]  # u100, u101 now hold vecs[250], like u250
    assert len(res) == 5 and len({u for u, _ in res}) == 5
    assert {u for u, _ in res[:3]} == {"u100", "u101", "u250"}


def test_auto_kind_switches_on_rebuild() -> None:
    idx = LookalikeIndex(IndexConfig(dim=DIM, exact_below=1000, gpu="off"))
    rng = np.random.default_rng(1)
    idx.upsert([f"a{i}" for i in range(999)], unit(rng, 999))
    assert idx.kind == "flat" and not idx.needs_rebuild()
    idx.upsert(["b", "c"], unit(rng, 2))
    assert idx.needs_rebuild()
    assert idx.rebuild().kind == "ivfsq" and idx.kind == "ivfsq" and not idx.needs_rebuild()
    got = idx.vector_of("b")  # read back from the float16 copy kept since the first upsert
    assert got is not None and got.shape == (DIM,)
    idx.delete([f"a{i}" for i in range(100)])
    assert idx.needs_rebuild() and idx.rebuild().kind == "flat"


def test_auto_picks_ivfsq_on_the_cpu_ivf_on_a_gpu_or_above_its_recall_cap() -> None:
    cfg = IndexConfig(exact_below=50_000)
    assert [cfg.kind_for(n) for n in (49_999, 50_000)] == ["flat", "ivfsq"]
    assert cfg.kind_for(50_000, gpu=True) == "ivf"  # no SQ on the GPU path
    assert IndexConfig(recall_target=0.99).kind_for(50_000) == "ivf"  # past SQ8's recall cap
    small = IndexConfig(exact_below=100)  # too few points a list for SQ8's ranges
    assert [small.kind_for(n) for n in (99, 500, 1_000)] == ["flat", "ivf", "ivfsq"]
    assert IndexConfig(kind="ivf").kind_for(10**6) == "ivf"  # a kind asked is kept


def test_empty_and_duplicates() -> None:
    idx = make()
    q = unit(np.random.default_rng(2), 3)
    assert idx.search(q, k=4) == [[], [], []]
    idx.upsert(["x", "x"], q[:2])  # last one wins
    assert np.allclose(idx.vector_of("x"), q[1]) and idx.size == 1
    assert idx.search(q[1:2], k=4) == [[("x", pytest.approx(1.0, abs=1e-6))]]
    idx.upsert([], np.zeros((0, DIM), np.float32))


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (["a"], np.ones((1, DIM + 1)), r"shape \(N, 16\)"),
        (["a"], np.ones(DIM), r"shape \(N, 16\)"),
        (["a", "b"], np.ones((1, DIM)), "2 user ids but 1 vectors"),
        (["a"], np.full((1, DIM), np.nan), "row 0 has NaN"),
        (["a", "b"], np.vstack([np.ones(DIM), np.zeros(DIM)]), "row 1 is all zeros"),
        ([""], np.ones((1, DIM)), "non-empty strings"),
        ([7], np.ones((1, DIM)), "non-empty strings"),
        ("ab", np.ones((2, DIM)), "not one string"),
        (["a"], np.array([["x"] * DIM]), "real numbers"),
    ],
)
def test_upsert_validation(ids: list[str], vectors: np.ndarray, message: str) -> None:
    idx = make()
    with pytest.raises(ValueError, match=message):
        idx.upsert(ids, vectors)
    assert idx.size == 0


def test_search_validation() -> None:
    idx, vecs = loaded("flat", n=10)
    with pytest.raises(ValueError, match="k must be"):
        idx.search(vecs[:1], k=0)
    with pytest.raises(ValueError, match="shape"):
        idx.search(vecs[0], k=1)
    with pytest.raises(ValueError, match="NaN"):
        idx.search(np.full((1, DIM), np.inf), k=1)
    with pytest.raises(ValueError, match="dim must be"):
        IndexConfig(dim=0)


@pytest.mark.parametrize("kind", KINDS)
def test_writes_during_a_build_are_replayed(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes landing between the snapshot and the swap reach the new structure."""
    import services.index.ann as ann

    idx, vecs = loaded(kind, n=300)
    fresh = unit(np.random.default_rng(5), 3)
    real_build = ann.build

    def build_then_write(*args: object) -> object:
        built = real_build(*args)  # type: ignore[arg-type]
        idx.upsert(["u0", "brand-new", "short-lived"], fresh)  # replace, add, add
        idx.delete(["u1", "short-lived"])  # delete from snapshot, delete a post-snapshot add
        return built

    monkeypatch.setattr(ann, "build", build_then_write)
    info = idx.rebuild()
    assert info.size == idx.size == 300  # 300 - u1 + brand-new
    assert idx._built.ntotal - idx._built.n_stale == 300  # noqa: SLF001
    assert idx.search(fresh[:2], k=1) == [
        [("u0", pytest.approx(1.0, abs=1e-5))],
        [("brand-new", pytest.approx(1.0, abs=1e-5))],
    ]
    hits = {u for row in idx.search(np.vstack([vecs[:2], fresh[2:]]), k=3) for u, _ in row}
    assert not {"u1", "short-lived"} & hits
    assert "u0" not in {u for u, _ in idx.search(vecs[:1], k=3)[0]}


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_rebuild_swap_under_concurrent_searches_and_writes(kind: str) -> None:
    """Searches never fail or see a half-built index while rebuilds and upserts run; writes
    made during a build survive the swap."""
    base, _ = clustered_unit_vectors(4000, 0, ClusteredSpec(dim=DIM, n_clusters=40, seed=3))
    idx = make(kind)
    ids = [f"u{i}" for i in range(len(base))]
    idx.upsert(ids, base)
    idx.rebuild()
    stop = threading.Event()
    errors: list[BaseException] = []
    searches = 0

    def searcher() -> None:
        nonlocal searches
        try:
            while not stop.is_set():
                for hits in idx.search(base[:8], k=5, exclude={"u1"}):
                    assert len(hits) == 5 and "u1" not in {u for u, _ in hits}
                searches += 1
        except BaseException as exc:
            errors.append(exc)

    rng = np.random.default_rng(4)
    moved: dict[str, np.ndarray] = {}
    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for round_ in range(3):
            rebuild = threading.Thread(target=idx.rebuild)
            rebuild.start()
            while rebuild.is_alive() or len(moved) < 300 * (round_ + 1):
                who = [f"u{i}" for i in rng.integers(10, len(base), 50)]
                vec = unit(rng, 50)
                idx.upsert(who, vec)
                moved.update(zip(who, vec, strict=True))
                idx.delete([f"u{rng.integers(10, len(base))}"])
                time.sleep(0.001)
            rebuild.join()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert searches > 0
    # Every write made while builds ran is in the swapped-in index.
    for user, vec in list(moved.items())[-200:]:
        if user in idx:
            assert np.allclose(idx.vector_of(user), vec)
            assert idx.search(vec[None], k=1)[0][0][0] == user
    idx.rebuild()
    assert idx._built.n_stale == 0  # noqa: SLF001
    assert idx._built.ntotal == idx.size  # noqa: SLF001


def test_ivfsq_replaces_in_place_scores_from_its_codes_and_reads_back_its_copy() -> None:
    """IVF-SQ removes ids (hash map): a replaced vector leaves nothing hidden and the fast
    path keeps serving; its scores come from 8-bit codes (within 0.05 of the cosine on these
    16-d vectors in 8 lists; 0.004 on 64-d clustered ones) and read-backs from the float16
    copy (exact to ~1e-3)."""
    n = 2_000  # fewer vectors stay flat (the codes' ranges want a few points a list)
    idx, vecs = loaded("ivfsq", n=n)
    assert idx.built.rerank == 1 and idx.built.removable and idx.built.master is None
    got = idx.search(vecs[:50], k=5)
    for i, hits in enumerate(got):
        assert hits[0][0] == f"u{i}" and hits[0][1] == pytest.approx(1.0, abs=0.05)
        for user, score in hits:
            exact = float(vecs[int(user[1:])] @ vecs[i])
            assert score == pytest.approx(exact, abs=0.05)
    idx.upsert(["u0"], vecs[1:2])
    assert idx.built.n_stale == 0 and np.allclose(idx.vector_of("u0"), vecs[1], atol=2e-3)
    assert {u for u, _ in idx.search(vecs[1:2], k=2)[0]} == {"u0", "u1"}
    assert idx.delete(["u1"]) == 1 and "u1" not in {u for u, _ in idx.search(vecs[1:2], k=5)[0]}
    assert idx.built.n_stale == 0
    info = idx.rebuild()
    assert info.kind == "ivfsq" and info.size == idx.size == n - 1
    assert idx.search(vecs[1:2], k=1)[0][0][0] == "u0"


def test_ivfpq_writes_rebuild_and_reads_back_from_its_copy() -> None:
    """IVF-PQ cannot remove or give back vectors: replaced ones are hidden until a rebuild,
    scores and read-backs come from the float16 copy (exact to ~1e-3)."""
    n = 10_500  # IVF-PQ trains 256 centroids a code byte; fewer vectors stay flat
    idx, vecs = loaded("ivfpq", n=n)
    assert idx.built.rerank > 1 and idx.built.calibration is None  # make() pins nprobe
    hits = idx.search(vecs[:20], k=3)
    assert [h[0][0] for h in hits] == [f"u{i}" for i in range(20)]
    assert all(h[0][1] == pytest.approx(1.0, abs=2e-3) for h in hits)
    idx.upsert(["u0"], vecs[1:2])
    assert idx.built.n_stale == 1 and np.allclose(idx.vector_of("u0"), vecs[1], atol=2e-3)
    assert {u for u, _ in idx.search(vecs[1:2], k=2)[0]} == {"u0", "u1"}
    assert idx.delete(["u1"]) == 1 and "u1" not in {u for u, _ in idx.search(vecs[1:2], k=5)[0]}
    arrays = idx.search_arrays(vecs[:5], k=4, exclude={"u2"})
    assert arrays.lists() == idx.search(vecs[:5], k=4, exclude={"u2"})
    info = idx.rebuild()
    assert info.kind == "ivfpq" and info.size == idx.size == n - 1 and idx.built.n_stale == 0
    assert idx.search(vecs[1:2], k=1)[0][0][0] == "u0"
