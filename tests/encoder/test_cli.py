"""`persona train / encode / eval / model` through the CLI entry point, on tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from services.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_is_fast_and_lists_commands() -> None:
    code = "import sys, services.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"  # torch is imported lazily, inside the commands
    parser = build_parser()
    args = parser.parse_args(["model", "list", "--models", "/tmp/x"])
    assert args.func.__name__ == "cmd_model" and args.models == Path("/tmp/x")
    for cmd in (["train", "--synthetic"], ["encode", "--events", "a", "--out", "b"], ["eval"]):
        assert callable(parser.parse_args(cmd).func)


@pytest.mark.slow
def test_train_encode_eval_model_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the CLI trains the default-size model; shrink it for the test through the defaults
    from dataclasses import replace

    import encoder.train as train_mod

    tiny = train_mod.TrainSpec()
    tiny = replace(
        tiny,
        model=replace(tiny.model, d_model=32, n_layers=1, n_heads=2, d_ff=64),
        train=replace(tiny.train, epochs=1, train_max_events=16, cuts_per_user=1, min_examples=0),
    )
    monkeypatch.setattr(train_mod, "TrainSpec", lambda: tiny)
    models = tmp_path / "models"
    events = tmp_path / "events.jsonl"
    data = ["data", "synthetic", "--users", "120", "--seed", "9", "--rename", "--out", str(events)]
    assert main(data) == 0
    split = capsys.readouterr().out.strip()

    # trained on everything: no held-out part, so the gate and `eval` refuse to judge it
    argv = ["train", "--events", str(events), "--models", str(models), "--quiet"]
    assert main([*argv, "--split-at", "none"]) == 0
    version = capsys.readouterr().out.strip().splitlines()[-1]
    assert version.startswith("v") and (models / version / "weights.pt").exists()
    leak = ["eval", "--events", str(events), "--split-at", split, "--models", str(models)]
    assert main(leak) == 1
    capsys.readouterr()

    out = tmp_path / "vecs.parquet"
    assert (
        main(["encode", "--events", str(events), "--out", str(out), "--models", str(models)]) == 0
    )
    table = pq.read_table(out).to_pylist()
    assert len(table) == 120 and table[0]["model_version"] == version
    assert len(table[0]["vector"]) == 64 and table[0]["n_events"] > 0
    out2 = tmp_path / "vecs2.parquet"  # two passes at once: the same vectors
    assert main(["encode", "--events", str(events), "--out", str(out2), "--models", str(models),
                 "--streams", "2"]) == 0  # fmt: skip
    again = pq.read_table(out2).to_pylist()
    assert [r["user_id"] for r in again] == [r["user_id"] for r in table]
    np.testing.assert_allclose([r["vector"] for r in again], [r["vector"] for r in table],
                               atol=1e-5)  # fmt: skip

    capsys.readouterr()
    assert main(["model", "list", "--models", str(models)]) == 0
    assert capsys.readouterr().out.startswith(f"* {version}")
    assert main(["model", "show", version, "--models", str(models)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["active"] is True and shown["tampered_files"] == []
    assert any(line.startswith("sku:") for line in shown["features"])  # the discovered spec
    assert shown["propensities"]["names"][0] == "(any)" and shown["propensities"]["horizons_ms"]
    assert main(["model", "rollback", "--models", str(models)]) == 1  # nothing to roll back to
    empty = ["encode", "--events", str(events), "--out", str(out), "--models", str(tmp_path / "e")]
    assert main(empty) == 1  # no active model: a clear error, exit 1

    # trained with the held-out split: eval and the gate run on it
    assert main([*argv, "--split-at", split]) == 0
    held = capsys.readouterr().out.strip().splitlines()[-1]
    report = tmp_path / "eval.json"
    png = tmp_path / "reliability.png"
    argv_eval = ["eval", "--model", held, "--json", str(report), "--models", str(models)]
    assert main([*argv_eval, "--reliability", str(png)]) == 0
    rep = json.loads(report.read_text())
    assert set(rep["mean_auc"]) == {"embedding", "aggregates", "both"}
    assert rep["split"]["split_at_ms"] == int(split) and rep["outcomes"]
    printed = capsys.readouterr().out
    assert "mean AUC" in printed and "outcome propensities" in printed
    prop = rep["propensities"]  # the version's calibrated heads, on the same split
    assert prop["split_at_ms"] == int(split) and prop["users"] == rep["split"]["users"]
    assert prop["cells"] > 0 and png.read_bytes()[:4] == b"\x89PNG"
    cwd = tmp_path / "cwd"  # without --reliability: no diagram, nothing in the working dir
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(argv_eval) == 0
    assert "--reliability PNG draws it" in capsys.readouterr().out and not list(cwd.iterdir())
    assert main(["model", "validate", held, "--models", str(models), "--tolerance", "1"]) == 0
    assert str(events.resolve()) in capsys.readouterr().out

    # a synthetic model is judged on held-out synthetic users
    syn = tmp_path / "syn"
    assert main(["train", "--synthetic", "--users", "60", "--models", str(syn), "--quiet"]) == 0
    report2 = tmp_path / "eval2.json"
    png2 = tmp_path / "reliability2.png"
    argv2 = ["eval", "--eval-users", "60", "--json", str(report2), "--reliability", str(png2)]
    assert main([*argv2, "--models", str(syn)]) == 0
    rep2 = json.loads(report2.read_text())
    assert set(rep2) == {"embedding", "aggregate_baseline", "random", "propensities"}
    assert set(rep2["embedding"]) == {"auc_converts", "auc_churns", "precision_at_10"}
