"""The short-term head (issue #17): trained with the version, served in numpy, parity-checked."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from encoder import registry
from encoder.api import Encoder
from encoder.release import parity_check, train_version
from encoder.shortterm import (
    PARITY_FILE,
    ROWS_PARITY_FILE,
    ShortTermHead,
    ShortTermParityError,
)
from encoder.synthetic import SyntheticDataset
from encoder.train import TrainSpec, group_by_user


def test_version_keeps_a_head_that_reproduces_its_parity_sample(registry_with_two) -> None:
    models, v1, _ = registry_with_two
    head = ShortTermHead.load(models, v1)
    assert head is not None
    metrics = registry.read_json(models, v1, "metrics.json")["short_term"]
    # the head recovers a real share of what a refresh changes (0 = no better than the
    # stale vector; measured ~0.7 on this data)
    assert metrics["explained_share"]["all"] > 0.3
    assert head.parity_error(models / v1 / PARITY_FILE) < 1e-5
    assert len((models / v1 / PARITY_FILE).read_text().splitlines()) > 0
    gate = parity_check(models, v1)  # the promotion gate checks the head too
    assert gate.ok and gate.short_term_diff is not None and gate.short_term_diff < 1e-5


def test_version_keeps_its_rows_parity_sample(registry_with_two) -> None:
    """Training writes the rows parity sample (what the Go front checks its head against):
    the parity sample's cases as the head's input rows, which numpy's `delta_rows`
    reproduces, and whose deltas are the parity sample's own (rows = `event_rows`)."""
    models, v1, _ = registry_with_two
    head = ShortTermHead.load(models, v1)
    assert head is not None
    rows_cases = [json.loads(x) for x in (models / v1 / ROWS_PARITY_FILE).read_text().splitlines()]
    cases = [json.loads(x) for x in (models / v1 / PARITY_FILE).read_text().splitlines()]
    assert len(rows_cases) == len(cases) > 0
    assert registry.verify_manifest(models, v1) == []  # listed in the manifest, read-only
    assert ((models / v1 / ROWS_PARITY_FILE).stat().st_mode & 0o222) == 0
    for rc, c in zip(rows_cases, cases, strict=True):
        assert rc["nearline"] == c["nearline"]
        kept = c["events"][-head.max_events :]
        z = np.asarray([rc["nearline"]], np.float32)
        rows = np.asarray(rc["rows"], np.float32).reshape(len(kept), head.row_dim)
        events = [registry.event_from_json(e) for e in kept]
        np.testing.assert_array_equal(rows, head.event_rows(events))
        got = head.delta_rows(z, rows, np.asarray([len(rows)]))[0]
        np.testing.assert_array_equal(got, np.asarray(rc["delta"], np.float32))
        np.testing.assert_allclose(got, np.asarray(c["delta"], np.float32), rtol=0, atol=1e-4)


def test_delta_moves_a_stale_vector_towards_the_refreshed_one(
    registry_with_two, small_data: SyntheticDataset
) -> None:
    models, v1, _ = registry_with_two
    head = ShortTermHead.load(models, v1)
    enc = Encoder.load(models, v1)
    assert head is not None
    users = group_by_user(small_data.events)
    windows = [w for w in users.values() if len(w) > 8][:64]
    stale_w = [w[:-3] for w in windows]
    new = [w[-3:] for w in windows]
    stale = enc.encode(stale_w, [n[0].ts_ms for n in new])
    fresh = enc.encode(windows, [w[-1].ts_ms for w in windows])
    delta = head.delta(stale, new)
    assert delta.shape == stale.shape and delta.dtype == np.float32
    before = ((fresh - stale) ** 2).sum()
    after = ((fresh - stale - delta) ** 2).sum()
    assert after < 0.8 * before
    # no new events: the combined vector is the nearline one, exactly
    assert not head.delta(stale[:2], [[], new[1]])[0].any()
    assert head.delta(stale[:2], [[], new[1]])[1].any()


def test_a_head_that_does_not_reproduce_its_sample_is_refused(
    registry_with_two, tmp_path: Path
) -> None:
    models, v1, _ = registry_with_two
    copy = tmp_path / "models"
    shutil.copytree(models / v1, copy / v1)
    p = copy / v1 / PARITY_FILE
    p.chmod(0o644)
    lines = p.read_text().splitlines()
    case = json.loads(lines[0])
    case["delta"] = [x + 0.5 for x in case["delta"]]
    p.write_text("\n".join([json.dumps(case), *lines[1:]]) + "\n")
    with pytest.raises(ShortTermParityError, match="parity"):
        ShortTermHead.load(copy, v1)


def test_version_trained_without_a_head_has_none(
    tiny_spec: TrainSpec, small_data: SyntheticDataset, tmp_path: Path
) -> None:
    spec = replace(tiny_spec, train=replace(tiny_spec.train, short_term=False, epochs=1))
    v, metrics = train_version(
        small_data.events[:2000], spec, tmp_path, small_data.config.end_ms, parity_n=4
    )
    assert "short_term" not in metrics
    assert ShortTermHead.load(tmp_path, v) is None
