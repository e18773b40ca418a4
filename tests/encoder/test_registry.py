"""Registry: first version active, immutable folders, round trip, parity, promote, rollback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder import registry
from encoder.api import Encoder, active_version
from encoder.evaluate import EvalConfig
from encoder.release import parity_check, promote

TINY_EVAL = EvalConfig(users=80, events_per_user=30.0, folds=2)


def test_first_version_is_active_later_ones_wait(registry_with_two) -> None:  # type: ignore[no-untyped-def]
    models, v1, v2 = registry_with_two
    assert v1 != v2
    assert registry.versions(models) == sorted([v1, v2])
    assert active_version(models) == v1
    for name in (
        "weights.pt",
        "tokenizer.json",
        "model.json",
        "metrics.json",
        "parity.npy",
        "parity.jsonl",
        "MANIFEST.json",
    ):
        p = models / v1 / name
        assert p.exists(), name
        assert (p.stat().st_mode & 0o222) == 0, f"{name} is writable"
    assert registry.verify_manifest(models, v1) == []


def test_save_load_round_trip(registry_with_two) -> None:  # type: ignore[no-untyped-def]
    models, v1, _ = registry_with_two
    enc = Encoder.load(models)  # the active version
    assert enc.version == v1 and enc.dim == 64 and enc.max_events == 64
    windows, nows, expected = registry.load_parity(models, v1)
    assert len(windows) == 32
    got = enc.encode(windows, nows)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert parity_check(models, v1).ok


def _tampered_copy(models: Path, version: str, dst: Path) -> Path:
    shutil.copytree(models, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    w = dst / version / "weights.pt"
    state = torch.load(w, weights_only=True)
    key = next(k for k in state if k.startswith("proj."))
    state[key] = state[key] + 0.05 * torch.randn_like(state[key])
    torch.save(state, w)
    return dst


def test_parity_refuses_tampered_model(registry_with_two, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    models, _, v2 = registry_with_two
    bad = _tampered_copy(models, v2, tmp_path / "bad")
    res = parity_check(bad, v2)
    assert not res.ok and res.max_abs_diff > 1e-3 and "weights.pt" in res.tampered_files
    with pytest.raises(registry.RegistryError, match="MANIFEST"):  # refresh, serve, encode
        Encoder.load(bad, v2)
    rep = promote(bad, v2, TINY_EVAL, skip_validate=True)
    assert rep["ok"] is False and "parity" in rep["reason"]
    assert active_version(bad) != v2


def test_promote_then_rollback(registry_with_two, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    models, v1, v2 = registry_with_two
    reg = tmp_path / "reg"
    shutil.copytree(models, reg)
    rep = promote(reg, v2, TINY_EVAL, tolerance=1.0)  # validation runs, tolerance wide open
    assert rep["ok"], rep
    assert rep["validate"]["active"] == v1 and "candidate_metrics" in rep["validate"]
    assert active_version(reg) == v2
    assert Encoder.load(reg).version == v2
    assert registry.rollback(reg) == (v2, v1)
    assert active_version(reg) == v1
    with pytest.raises(registry.RegistryError):
        registry.rollback(reg)


def test_validate_refuses_regression(registry_with_two, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from encoder.release import validate

    models, _, v2 = registry_with_two
    reg = tmp_path / "reg"
    shutil.copytree(models, reg)
    res = validate(reg, v2, TINY_EVAL, tolerance=-1.0)  # demands a gain of 1.0: impossible
    assert res["ok"] is False and res["regressions"]
    assert promote(reg, v2, TINY_EVAL, tolerance=-1.0)["ok"] is False


def test_unknown_version_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(registry.RegistryError):
        Encoder.load(tmp_path)
    assert active_version(tmp_path) is None


def test_damaged_registries_give_clear_answers(  # type: ignore[no-untyped-def]
    registry_with_two, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog
) -> None:
    """A version whose parity sample is gone fails parity (was a traceback out of
    `model promote`); a stray folder is not listed as a version (it broke `model list`);
    a rollback to a version removed since is refused before ACTIVE names it (the refresher
    then failed to follow on every loop); the CLI says what is wrong in one line."""
    from services.cli import main

    models, v1, v2 = registry_with_two
    reg = tmp_path / "reg"
    shutil.copytree(models, reg)
    (reg / v2 / "parity.jsonl").unlink()
    res = parity_check(reg, v2)
    assert not res.ok and res.max_abs_diff == float("inf")
    (reg / "v1 old").mkdir()
    assert registry.versions(reg) == [v1, v2]
    assert main(["model", "list", "--models", str(reg)]) == 0
    registry.set_active(reg, v2)
    shutil.rmtree(reg / v1)
    with pytest.raises(registry.RegistryError, match="not found"):
        registry.rollback(reg)
    assert registry.active_version(reg) == v2
    (reg / v2 / "tokenizer.json").unlink()
    assert main(["model", "show", v2, "--models", str(reg)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err + caplog.text and "tokenizer.json" in out.err + caplog.text
