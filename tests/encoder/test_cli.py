"""`persona train / encode / eval / model` through the CLI entry point, on tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from encoder.io import write_events_jsonl
from encoder.synthetic import SyntheticConfig, generate
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
def test_train_encode_model_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the CLI trains the default-size model; shrink it for the test through the defaults
    from dataclasses import replace

    import encoder.train as train_mod

    tiny = train_mod.TrainSpec()
    tiny = replace(
        tiny,
        model=replace(tiny.model, d_model=32, n_layers=1, n_heads=2, d_ff=64),
        train=replace(tiny.train, epochs=1, train_max_events=16, cuts_per_user=1),
    )
    monkeypatch.setattr(train_mod, "TrainSpec", lambda: tiny)
    models = tmp_path / "models"
    ds = generate(SyntheticConfig(users=60, events_per_user=20.0, seed=9))
    events = tmp_path / "events.jsonl"
    write_events_jsonl(events, ds.events)

    assert main(["train", "--events", str(events), "--models", str(models), "--quiet"]) == 0
    version = capsys.readouterr().out.strip().splitlines()[-1]
    assert version.startswith("v") and (models / version / "weights.pt").exists()

    out = tmp_path / "vecs.parquet"
    assert (
        main(["encode", "--events", str(events), "--out", str(out), "--models", str(models)]) == 0
    )
    table = pq.read_table(out).to_pylist()
    assert len(table) == 60 and table[0]["model_version"] == version
    assert len(table[0]["vector"]) == 64 and table[0]["n_events"] > 0

    capsys.readouterr()
    assert main(["model", "list", "--models", str(models)]) == 0
    assert capsys.readouterr().out.startswith(f"* {version}")
    assert main(["model", "show", version, "--models", str(models)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["active"] is True and shown["tampered_files"] == []
    assert main(["model", "rollback", "--models", str(models)]) == 1  # nothing to roll back to
    assert (
        main(
            [
                "encode",
                "--events",
                str(events),
                "--out",
                str(out),
                "--models",
                str(tmp_path / "empty"),
            ]
        )
        == 1
    )  # no active model: a clear error, exit 1

    report = tmp_path / "eval.json"
    assert main(["eval", "--eval-users", "60", "--json", str(report), "--models", str(models)]) == 0
    rep = json.loads(report.read_text())
    assert set(rep) == {"embedding", "aggregate_baseline", "random"}
    assert set(rep["embedding"]) == {"auc_converts", "auc_churns", "precision_at_10"}
    assert 0.0 <= rep["random"]["precision_at_10"] <= 1.0
