"""Drift (issue #18 item 5b): the cosine distance of each refreshed user's vector from its
previous one, and the norm ratio against the version's parity sample."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.refresh.config import RefreshConfig
from services.refresh.drift import Drift, Previous, cosine_distance
from services.refresh.encoders import EncoderCache
from services.refresh.metrics import refresh_metrics
from services.store.records import StoredVector, VectorBatch
from tests.refresh.conftest import Env
from tests.refresh.support import add_events

DRIFT = "persona_refresh_vector_drift_cosine"


def test_cosine_distance() -> None:
    a = np.array([[1, 0], [1, 0], [1, 0], [0, 0]], np.float32)
    b = np.array([[2, 0], [0, 3], [-1, 0], [1, 0]], np.float32)
    d = cosine_distance(a, b)
    assert np.allclose(d[:3], [0.0, 1.0, 2.0]) and np.isnan(d[3])


@pytest.mark.integration
def test_a_second_pass_observes_each_returning_users_distance(env: Env) -> None:
    users = [f"u{i:03d}" for i in range(150)]
    add_events(env.windows, users, 3, seed=1)
    reg = CollectorRegistry()
    cfg = RefreshConfig(embeddings_topic=env.topic, batch_size=64)
    r = env.refresher(cfg, refresh_metrics(reg))
    r.run(threading.Event(), until_idle=True)
    v1 = env.v1
    assert (reg.get_sample_value(DRIFT + "_count", {"version": v1}) or 0) == 0  # none before
    parity = np.load(env.models / v1 / "parity.npy")
    before = {u: s[0].vector for u, s in zip(users, env.vectors.get_batch(users, v1), strict=True)}
    want_ratio = np.mean([np.linalg.norm(v) for v in before.values()]) / np.mean(
        np.linalg.norm(parity, axis=1)
    )  # the last batch's only; the batches are alike
    ratio = reg.get_sample_value("persona_refresh_vector_norm_ratio", {"version": v1})
    assert ratio is not None and 0.5 * want_ratio < ratio < 2 * want_ratio

    back = users[:100]
    add_events(env.windows, back, 2, seed=2, offset0=10_000)
    r = env.refresher(cfg, refresh_metrics(reg2 := CollectorRegistry()))
    r.run(threading.Event(), until_idle=True)
    after = {u: s[0].vector for u, s in zip(back, env.vectors.get_batch(back, v1), strict=True)}
    want = cosine_distance(np.stack([after[u] for u in back]), np.stack([before[u] for u in back]))
    assert reg2.get_sample_value(DRIFT + "_count", {"version": v1}) == 100
    got_sum = reg2.get_sample_value(DRIFT + "_sum", {"version": v1})
    assert got_sum == pytest.approx(float(want.sum()), rel=1e-4, abs=1e-6)
    assert got_sum > 0  # new events moved the vectors


@pytest.mark.integration
def test_drift_off_reads_nothing_more(env: Env) -> None:
    users = [f"u{i:03d}" for i in range(40)]
    add_events(env.windows, users, 3, seed=1)
    reg = CollectorRegistry()
    cfg = RefreshConfig(embeddings_topic=env.topic, batch_size=64, drift=False)
    r = env.refresher(cfg, refresh_metrics(reg))
    assert r.drift is None
    r.run(threading.Event(), until_idle=True)
    add_events(env.windows, users, 1, seed=2, offset0=10_000)
    env.refresher(cfg, refresh_metrics(reg2 := CollectorRegistry())).run(
        threading.Event(), until_idle=True
    )
    assert reg2.get_sample_value(DRIFT + "_count", {"version": env.v1}) is None


class _Failing:
    def read_batch(
        self, user_ids: Sequence[str], version: str, history: int, deadline: float
    ) -> VectorBatch:
        raise ConnectionError("store away")


def _vec(uid: str, x: list[float]) -> StoredVector:
    return StoredVector(uid, "v1-d", np.array(x, np.float32), 0, 1, 1)


def test_a_failed_read_measures_nothing_and_does_not_raise(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    d = Drift(_Failing(), refresh_metrics(reg), tmp_path)  # type: ignore[arg-type]
    assert d.read(["a"], ["v1-d"]) is None
    d.observe(None, [_vec("a", [1, 0])])
    assert reg.get_sample_value(DRIFT + "_count", {"version": "v1-d"}) is None
    assert reg.get_sample_value("persona_refresh_vector_norm_ratio", {"version": "v1-d"}) is None


def test_observe_matches_users_by_id_and_skips_those_without_a_previous_vector(
    tmp_path: Path,
) -> None:
    (tmp_path / "v1-d").mkdir()
    np.save(tmp_path / "v1-d" / "parity.npy", np.array([[2, 0], [0, 2]], np.float32))
    reg = CollectorRegistry()
    d = Drift(_Failing(), refresh_metrics(reg), tmp_path)  # type: ignore[arg-type]
    heads = VectorBatch(
        np.array([[[0, 1]], [[0, 0]], [[1, 0]]], np.float32),  # (3, 1, 2): b has none
        np.array([1, 0, 1]),
        np.zeros((3, 1), np.int64), np.zeros((3, 1), np.int64), np.zeros((3, 1), np.int64),
    )  # fmt: skip
    prev = Previous(["c", "b", "a"], {"v1-d": heads})
    d.observe(prev, [_vec("a", [1, 0]), _vec("b", [1, 0]), _vec("c", [1, 0]), _vec("z", [4, 0])])
    assert reg.get_sample_value(DRIFT + "_count", {"version": "v1-d"}) == 2  # a: 0, c: 1
    assert reg.get_sample_value(DRIFT + "_sum", {"version": "v1-d"}) == pytest.approx(1.0)
    ratio = reg.get_sample_value("persona_refresh_vector_norm_ratio", {"version": "v1-d"})
    assert ratio == pytest.approx((1 + 1 + 1 + 4) / 4 / 2)


@pytest.mark.integration
def test_the_compiled_metric_says_whether_each_version_runs_compiled(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With compiling asked: 1 for a version whose encoder compiled (in the background: the
    first pass may run eagerly; the pass after the compile reads 1), 0 for one that fell back
    to the eager model (no compiler), and the users are refreshed either way; without it:
    no series."""
    from encoder.compiled import compiler

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    users = [f"u{i:03d}" for i in range(40)]
    name, lbl = "persona_refresh_encoder_compiled", {"version": env.v1}
    cases: list[tuple[bool, str | None, float | None]] = [(False, None, None)]
    if compiler() is not None:
        cases.append((True, None, 1.0))
    cases.append((True, "/nonexistent/c++", 0.0))
    for i, (compile_, cxx, want) in enumerate(cases):
        if cxx is not None:
            monkeypatch.setenv("CXX", cxx)
        reg = CollectorRegistry()
        cfg = RefreshConfig(embeddings_topic=env.topic, batch_size=64, compile=compile_)
        metrics, encoders = refresh_metrics(reg), EncoderCache(env.models, "cpu", compile_)
        for j in range(2):  # a run's close waits for the compile: the second run reads it
            add_events(env.windows, users, 2, seed=3 + i, offset0=10_000 * (2 * i + j))
            env.refresher(cfg, metrics, encoders=encoders).run(threading.Event(), until_idle=True)
        assert reg.get_sample_value(name, lbl) == want
        written = reg.get_sample_value("persona_refresh_vectors_written_total")
        assert written == 2 * len(users)
