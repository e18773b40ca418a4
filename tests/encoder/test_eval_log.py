"""Evaluation on any log: the time split leaks nothing, outcomes come from the data, and the
promotion gate of an events-trained model runs on its own held-out split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from contract.events import Event
from encoder import registry
from encoder.datasets import synthetic_log
from encoder.evaluate import EvalConfig
from encoder.evaluate_log import (
    EvalData,
    LogEvalConfig,
    default_split,
    format_log_table,
    prepare,
    probe_aucs,
    score,
)
from encoder.eventlog import EventLog
from encoder.features import discover
from encoder.io import events_source, write_events_jsonl
from encoder.release import file_sha256, train_version, validate
from encoder.synthetic import SyntheticConfig
from encoder.tokenizer import DAY, WEEK, TokenizerConfig
from encoder.train import TrainSpec

SPLIT = 100 * DAY


def _log(after: str) -> list[Event]:
    """30 users with history before SPLIT; what happens after it depends on `after`."""
    out = []
    for u in range(30):
        for i in range(6):
            sku = f"s{(u + i) % 3}"
            out.append(Event(f"u{u}", f"h{i}", SPLIT - (i + 1) * DAY, "view", {"sku": sku}))
        if after == "plain" and u % 2 == 0:
            out.append(Event(f"u{u}", "f0", SPLIT + DAY, "buy", {"sku": "s0"}))
        if after == "other":  # everything at or after the split is different
            out.append(Event(f"u{u}", "f0", SPLIT, "buy", {"sku": "s9", "amount": 9.0}))
            out.append(Event(f"u{u}", "f1", SPLIT + 2 * DAY, "view", {"sku": "s1"}))
    return out


def test_nothing_at_or_after_the_split_reaches_windows_or_aggregates() -> None:
    seen: list[EventLog] = []

    def spy(log: EventLog, lo: np.ndarray, hi: np.ndarray, nows: np.ndarray) -> np.ndarray:
        seen.append(log)
        rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        assert (log.ts[rows] < nows[0]).all()
        return log.static[:, :1].astype(np.float32)[lo] + (hi - lo)[:, None]

    tok = TokenizerConfig(features=discover(_log("plain")))
    cfg = LogEvalConfig(split_at=SPLIT, min_class=1, folds=2)
    a = prepare(spy, tok, lambda: _log("plain"), cfg)
    b = prepare(spy, tok, lambda: _log("other"), cfg)
    assert all(lg.end_ms < SPLIT for lg in seen)  # the model only ever sees the history
    np.testing.assert_array_equal(a.embedding, b.embedding)
    np.testing.assert_array_equal(a.aggregates, b.aggregates)
    names = dict(zip(a.outcomes, a.labels.T, strict=True))
    order = np.array([int(u[1:]) for u in a.users])
    assert names["(any)"].tolist() == (order % 2 == 0).tolist()  # half the users come back
    assert names["sku=s0"].tolist() == (order % 2 == 0).tolist()
    assert "type=buy" not in a.outcomes  # outcomes are chosen from the history alone
    assert b.labels[:, a.outcomes.index("(any)")].all()
    report = score(a, cfg)
    assert {o["outcome"] for o in report["outcomes"]} >= {"(any)", "sku=s0"}


def test_repeated_probes_average_shuffles_and_read_real_signal() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = np.stack([x[:, 0] + rng.normal(size=200) > 0, rng.random(200) < 0.3], axis=1)
    once = [probe_aucs(x, y, 5, seed=s) for s in (3, 4, 5)]
    np.testing.assert_allclose(probe_aucs(x, y, 5, seed=3, repeats=3), np.mean(once, axis=0))
    assert min(a[0] for a in once) > 0.7  # the planted signal
    assert all(abs(a[1] - 0.5) < 0.15 for a in once)  # noise stays near chance
    assert len({round(float(a[0]), 6) for a in once}) > 1  # the shuffles differ


def test_the_report_gives_the_spread_over_shuffles() -> None:
    rng = np.random.default_rng(1)
    n = 120
    signal = rng.normal(size=n)
    labels = np.stack([signal + rng.normal(size=n) > 0, rng.random(n) < 0.5], axis=1)
    data = EvalData(
        users=[f"u{i}" for i in range(n)],
        embedding=np.stack([signal, rng.normal(size=n)], axis=1),
        aggregates=rng.normal(size=(n, 3)),
        labels=labels,
        outcomes=("type=buy", "sku=s1"),
        split={"split_at_ms": SPLIT},
    )
    one = score(data, LogEvalConfig(repeats=1, k=5))
    assert set(one["mean_auc_shuffle_sd"].values()) == {0.0}
    three = score(data, LogEvalConfig(repeats=3, k=5))
    sd = three["mean_auc_shuffle_sd"]
    assert all(0.0 <= v < 0.1 for v in sd.values()) and sd["both - aggregates"] > 0.0
    assert three["mean_auc"]["embedding"] > three["mean_auc"]["aggregates"] + 0.1  # the signal
    assert "sd over 3 shuffles" in format_log_table(three)
    assert "sd over" not in format_log_table(one)


def test_default_split() -> None:
    assert default_split(0, 20 * WEEK) == 18 * WEEK
    assert default_split(0, 4 * WEEK) == 3 * WEEK  # short logs: the last quarter


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    events, split = synthetic_log(SyntheticConfig(users=160, events_per_user=30.0, seed=12))
    path = tmp_path_factory.mktemp("log") / "events.jsonl"
    write_events_jsonl(path, events)
    return path, split


def test_the_gate_of_an_events_trained_model_uses_its_split(
    log_file: tuple[Path, int], tiny_spec: TrainSpec, tmp_path: Path
) -> None:
    path, split = log_file
    models = tmp_path / "models"
    es = {"events": str(path), "sha256": file_sha256(path), "split_at_ms": split}
    src = events_source(path)
    extra = {"source_kind": "events"}
    v1, m1 = train_version(
        src, tiny_spec, models, until_ms=split, eval_split=es, extra_metrics=extra, parity_n=8
    )
    assert m1["until_ms"] == split and m1["data_end_ms"] == split - 1
    spec2 = replace(tiny_spec, train=replace(tiny_spec.train, seed=3))
    v2, _ = train_version(
        src, spec2, models, until_ms=split, eval_split=es, extra_metrics=extra, parity_n=8
    )
    res = validate(models, v2, EvalConfig(users=50), tolerance=1.0)
    assert res["ok"] and res["active"] == v1 and str(path) in res["on"]
    assert set(res["candidate_metrics"]) == {"mean_auc", "lookalike_jaccard"}
    assert res["active_leak"] is False
    strict = validate(models, v2, EvalConfig(users=50), tolerance=-1.0)  # any value regresses
    assert not strict["ok"] and strict["regressions"]
    saved = registry.read_json(models, v2, "eval_log.json")
    assert saved["key"]["split"] == es and not saved["leak"]
    # trained from events on everything: nothing held out, nothing to validate on
    v3, _ = train_version(src, tiny_spec, models, extra_metrics=extra, parity_n=8)
    res3 = validate(models, v3, EvalConfig(users=50))
    assert not res3["ok"] and "without a held-out split" in res3["regressions"][0]
