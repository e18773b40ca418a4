"""Outcome propensities: Platt scaling recovers a planted miscalibration, the heads travel
with the version, and the held-out report measures AUC and calibration per horizon."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.events import Event
from encoder.api import Encoder
from encoder.evaluate import EvalConfig
from encoder.evaluate_outcomes import horizon_labels, write_reliability_png
from encoder.eventlog import build_log
from encoder.features import discover
from encoder.outcomes import OutcomeSpace
from encoder.propensity import (
    OutcomeHeads,
    calibrate,
    fit_platt,
    fit_platt_pooled,
    refit,
    reliability,
)
from encoder.release import outcomes_eval_version, train_version
from encoder.synthetic import SyntheticConfig, generate
from encoder.tokenizer import DAY, Tokenizer, TokenizerConfig
from encoder.train import TrainSpec


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_platt_recovers_a_planted_miscalibration() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2, size=(20_000, 2, 1))  # (N, K=2, Y=1) logits
    truth = _sig(0.5 * s - 1.0)  # the real probability: a = 0.5, b = -1
    y = rng.random(truth.shape) < truth
    ok = np.ones((20_000, 2), dtype=bool)
    ok[10_000:, 1] = False  # horizon 1 observable for half the rows only
    a, b, fitted = fit_platt(s, y, ok)
    assert fitted.all()
    np.testing.assert_allclose(a[:, 0], [0.5, 0.5], atol=0.06)
    np.testing.assert_allclose(b[:, 0], [-1.0, -1.0], atol=0.08)
    before = reliability(_sig(s[:, 0, 0]), y[:, 0, 0])["ece"]
    after = reliability(_sig(a[0, 0] * s[:, 0, 0] + b[0, 0]), y[:, 0, 0])["ece"]
    assert before > 0.1 and after < 0.02


def test_refit_recovers_planted_linear_heads_and_respects_the_mask() -> None:
    """Vectors whose outcomes follow known logistic heads: the refitted heads rank as well as
    the truth and their raw probabilities are calibrated; rows masked out of a horizon
    (not observable) do not pull its cells."""
    rng = np.random.default_rng(1)
    n, e = 20_000, 8
    z = rng.normal(1.0, 2.0, size=(n, e)).astype(np.float32)  # off-centre, scaled: refit copes
    w_true = rng.normal(0, 0.6, size=(2, e))  # (K * Y = 2, E)
    b_true = np.array([-2.0, 0.5])
    p = _sig(z @ w_true.T + b_true).reshape(n, 2, 1)  # (N, K=2, Y=1)
    y = rng.random(p.shape) < p
    ok = np.ones((n, 2), dtype=bool)
    ok[: n // 2, 1] = False
    y[: n // 2, 1, 0] = True  # garbage where masked: must not matter
    w, b = refit(z, y, ok)
    assert w.shape == (2, e) and b.shape == (2,)
    heads = calibrate(("x",), (1, 2), w, b, z[:0], y[:0], ok[:0])
    got = heads.probabilities(z, calibrated=False)  # (N, 2, 1)
    from sklearn.metrics import roc_auc_score

    for k in range(2):
        rows = ok[:, k]
        truth_auc = roc_auc_score(y[rows, k, 0], p[rows, k, 0])
        assert roc_auc_score(y[rows, k, 0], got[rows, k, 0]) > truth_auc - 0.005
        assert reliability(got[rows, k, 0], y[rows, k, 0])["ece"] < 0.02
    assert np.isfinite(w).all() and np.isfinite(b).all()


def test_cells_without_both_classes_keep_the_identity() -> None:
    s = np.linspace(-3, 3, 200)[:, None, None] * np.ones((1, 1, 2))  # (N, K=1, Y=2)
    y = np.zeros_like(s, dtype=bool)
    y[:100, 0, 0] = True  # outcome 0: both classes; outcome 1: never happens
    a, b, fitted = fit_platt(s, y, np.ones((200, 1), dtype=bool), min_class=10)
    assert fitted[0, 0] and not fitted[0, 1]
    assert (a[0, 1], b[0, 1]) == (1.0, 0.0)


def test_small_cells_get_their_horizons_pooled_scaling() -> None:
    """Rare outcomes share one miscalibration (a = 0.5, b = -1): none has 10
    positives of its own, together they have plenty; a horizon whose outcomes never happen
    keeps the identity."""
    rng = np.random.default_rng(1)
    n, y_n = 100, 24
    s = rng.normal(-4.0, 2.0, size=(n, 2, y_n))  # (N, K=2, Y=24)
    truth = _sig(0.5 * s - 1.0)
    y = rng.random(truth.shape) < truth
    y[:, 1] = False  # horizon 1: nothing ever happens
    ok = np.ones((n, 2), dtype=bool)
    assert (y[:, 0].sum(0) < 10).sum() >= 12 and y[:, 0].sum() >= 100
    a, b, how = fit_platt_pooled(s, y, ok, min_class=10)
    small = y[:, 0].sum(0) < 10
    assert (how[0][small] == 2).all() and (how[0][~small] == 1).all()
    assert (how[1] == 0).all() and (a[1] == 1.0).all() and (b[1] == 0.0).all()
    np.testing.assert_allclose(a[0][small], 0.5, atol=0.15)
    np.testing.assert_allclose(b[0][small], -1.0, atol=0.3)
    raw, cal = _sig(s[:, 0][:, small]), _sig(a[0][small] * s[:, 0][:, small] + b[0][small])
    assert (
        np.abs(cal.mean(0) - truth[:, 0][:, small].mean(0)).mean()
        < np.abs(raw.mean(0) - truth[:, 0][:, small].mean(0)).mean()
    ), "the pooled scaling brings each small cell's mean towards its true rate"


def test_cross_fitted_examples_join_the_calibration() -> None:
    """Ten validation users cannot calibrate a cell (< 10 positives); 2,000 cross-fitted
    training examples carrying the same planted miscalibration (a = 0.5, b = -1) can, and
    the report's ECE stays measured on the validation users."""
    rng = np.random.default_rng(2)
    w, bias = np.eye(1, 4, dtype=np.float32), np.zeros(1, np.float32)  # logit = z[:, 0]

    def draw(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = rng.normal(0.0, 2.0, size=(n, 4)).astype(np.float32)
        y = rng.random((n, 1, 1)) < _sig(0.5 * z[:, :1, None] - 1.0)
        return z, y, np.ones((n, 1), bool)

    z, y, ok = draw(10)
    alone = calibrate(("(any)",), (DAY,), w, bias, z, y, ok)
    assert not alone.calibrated.any()
    zx, yx, okx = draw(2_000)
    logits = zx[:, :1, None].astype(np.float64)  # what heads that never saw them say
    both = calibrate(("(any)",), (DAY,), w, bias, z, y, ok, extra=(logits, yx, okx))
    assert both.calibrated.all() and both.report["extra_examples"] == 2_000
    assert both.report["examples"] == 10
    assert both.a[0, 0] == pytest.approx(0.5, abs=0.1) and both.b[0, 0] == pytest.approx(
        -1, abs=0.2
    )


def test_ece_of_known_cases() -> None:
    assert reliability(np.full(50, 0.9), np.zeros(50, dtype=bool))["ece"] == pytest.approx(0.9)
    p = np.repeat([0.25, 0.75], 400)
    y = np.concatenate([np.arange(400) < 100, np.arange(400) < 300])
    assert reliability(p, y)["ece"] == pytest.approx(0.0, abs=1e-9)


def test_horizon_labels_count_only_events_inside_each_horizon() -> None:
    t0 = 100 * DAY
    evs = [
        Event("u", "a", t0 - DAY, "view", {}),
        Event("u", "b", t0 + 2 * 3_600_000, "buy", {}),  # 2 h after the split
        Event("u", "c", t0 + 3 * DAY, "view", {}),  # 3 d after
    ]
    spec = discover(evs)
    tok = Tokenizer(TokenizerConfig(features=spec))
    log = build_log(evs, tok)
    space = OutcomeSpace.from_spec(spec)
    users = np.array([0])
    hi = log.positions(users, np.array([t0]), True)
    hz = np.array([t0 + 3_600_000, t0 + DAY, t0 + 7 * DAY])
    y = horizon_labels(log, space, users, hi, hz)[0]  # (K, Y)
    col = {n: i for i, n in enumerate(space.names)}
    assert not y[0].any()  # nothing within 1 h
    assert y[1, col["type=buy"]] and not y[1, col["type=view"]] and y[1, col["(any)"]]
    assert y[2, col["type=view"]]


@pytest.fixture(scope="module")
def calibrated_version(
    tmp_path_factory: pytest.TempPathFactory, tiny_spec: TrainSpec
) -> tuple[Path, str]:
    """A version trained on 300 users: 30 validation users, enough to calibrate."""
    ds = generate(SyntheticConfig(users=300, events_per_user=30.0, seed=5))
    models = tmp_path_factory.mktemp("models")
    version, _ = train_version(ds.events, tiny_spec, models, ds.config.end_ms, parity_n=16)
    return models, version


def test_heads_are_saved_calibrated_and_reload_identically(
    calibrated_version: tuple[Path, str],
) -> None:
    models, version = calibrated_version
    enc = Encoder.load(models, version)
    heads = enc.outcomes
    assert heads is not None
    rep = heads.report
    assert rep["examples"] > 0 and rep["cells_calibrated"] > 0
    # fitted on these examples with the identity among the candidates: never a worse fit
    assert rep["log_loss_after"] <= rep["log_loss_before"] + 1e-3
    again = OutcomeHeads.from_json(heads.to_json())
    z = np.random.default_rng(0).normal(size=(5, heads.weight.shape[1])).astype(np.float32)
    np.testing.assert_array_equal(again.probabilities(z), heads.probabilities(z))
    p = heads.probabilities(z)
    assert p.shape == (5, len(heads.horizons_ms), len(heads.names))
    assert ((p >= 0) & (p <= 1)).all()


def test_cross_fitting_adds_the_training_users_at_the_fixed_times(
    tmp_path: Path, tiny_spec: TrainSpec
) -> None:
    """A 60-day world: enough validation users started before the fixed calibration times
    (14-21 days before the end), so the training users' out-of-fold examples join them (the
    default, `calibrate_crossfit` 5): 9 training users to each validation user."""
    ds = generate(SyntheticConfig(users=500, events_per_user=30.0, days=60.0, seed=6))
    assert tiny_spec.train.calibrate_crossfit == 5
    version, _ = train_version(ds.events, tiny_spec, tmp_path, ds.config.end_ms, parity_n=16)
    heads = Encoder.load(tmp_path, version).outcomes
    assert heads is not None
    rep = heads.report
    assert (
        rep["calibrated_on"]
        == f"fixed times + {rep['extra_examples']} out-of-fold training examples"
    )
    assert rep["extra_examples"] > 5 * rep["examples"] > 0
    # the validation users themselves at the fixed times (up to 8 each: 321 here), not at
    # their training-style cuts (93): the label once said "fixed times" over the cuts
    assert rep["examples"] >= 200, rep


def test_uncalibrated_heads_say_so() -> None:
    h = calibrate(("(any)",), (DAY,), np.ones((1, 4)), np.zeros(1), *_empty())
    assert h.report == {"examples": 0} and not h.calibrated.any()


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0, 1, 1), bool), np.zeros((0, 1), bool)


def test_held_out_report_and_diagram(calibrated_version: tuple[Path, str], tmp_path: Path) -> None:
    models, version = calibrated_version
    world = SyntheticConfig(seed=5)
    rep = outcomes_eval_version(models, version, None, EvalConfig(users=200, world=world))
    assert rep is not None and rep["cells"] > 0
    for row in rep["per_cell"]:
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["ece_after"] <= 1.0
    png = tmp_path / "r.png"
    write_reliability_png(rep, png, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ece_floor_is_what_a_calibrated_predictor_shows_and_falls_with_more_users() -> None:
    from encoder.propensity import ece_floor

    rng = np.random.default_rng(3)
    p = rng.beta(1.0, 6.0, size=1000)
    measured = np.mean([reliability(p, rng.random(1000) < p)["ece"] for _ in range(100)])
    assert abs(ece_floor(p) - measured) < 0.003
    assert ece_floor(rng.beta(1.0, 6.0, size=20_000)) < ece_floor(p) / 3


def test_calibration_cuts_every_user_at_fixed_times_a_day_apart() -> None:
    from encoder.steps import DAY_MS, fixed_time_cuts

    ds = generate(SyntheticConfig(users=40, events_per_user=30.0, seed=5))
    log = build_log(ds.events, Tokenizer(TokenizerConfig(features=discover(ds.events))))
    end, horizon = log.end_ms, 14 * DAY_MS
    users = np.arange(len(log.users))
    u, nows = fixed_time_cuts(log, np.concatenate([users, users]), end, horizon, times=3)
    assert set(nows.tolist()) == {end - horizon - j * DAY_MS for j in range(3)}
    first = log.ts[log.offsets[u]]
    assert (first < nows).all()  # a user is cut only at times after its first event
    for t in set(nows.tolist()):  # and then exactly once per time
        sel = u[nows == t]
        assert len(sel) == len(set(sel.tolist())) == int((log.ts[log.offsets[users]] < t).sum())
