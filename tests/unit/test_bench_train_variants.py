"""The training-variants benchmark (benchmarks/train_variants.py): variants checked before
anything trains, applied over the defaults, summarised beside the defaults; one real run of
a tiny log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from train_variants import main, parse_log, parse_variant, run_one, spec_for, summarise

from encoder import datasets
from encoder.io import write_events_jsonl
from encoder.synthetic import SyntheticConfig, generate
from encoder.train import TrainSpec


def test_a_variant_names_parts_and_fields_the_spec_has() -> None:
    name, over = parse_variant('w8 = {"objectives": {"w_residual": 8}}')
    assert (name, over) == ("w8", {"objectives": {"w_residual": 8}})
    for bad, why in [
        ("w8", "NAME=JSON"),
        ('={"model": {}}', "NAME=JSON"),
        ('defaults={"model": {}}', "baseline"),
        ("x={model", "x:"),
        ("x=[1]", "JSON object"),
        ('x={"modle": {}}', "'modle' is not one of"),
        ('x={"model": 3}', "object of fields"),
        ('x={"model": {"d_model": 64, "out_dims": 32}}', "model has no field out_dims"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_variant(bad)


def test_overrides_replace_only_their_fields_and_lists_become_tuples() -> None:
    spec = spec_for({"objectives": {"horizons_ms": [1, 2]}, "model": {"count_top": 4}}, seed=3)
    base = TrainSpec()
    assert spec.objectives.horizons_ms == (1, 2)
    assert spec.model.count_top == 4 and spec.model.d_model == base.model.d_model
    assert spec.objectives.w_residual == base.objectives.w_residual
    assert spec.train.seed == 3 and not spec.train.progress
    assert spec_for({}, 0).model == base.model


def test_log_paths_take_an_optional_split() -> None:
    assert parse_log("/tmp/a.jsonl@1700000000000") == (Path("/tmp/a.jsonl"), 1700000000000)
    assert parse_log("/tmp/a@b.jsonl") == (Path("/tmp/a@b.jsonl"), None)
    assert parse_log("log.parquet") == (Path("log.parquet"), None)


def test_summary_reads_each_variant_beside_the_defaults_on_shared_seeds() -> None:
    def row(variant: str, seed: int, emb: float, both: float) -> dict[str, object]:
        return {"log": "l", "variant": variant, "seed": seed, "embedding": emb,
                "aggregates": 0.8, "both": both}  # fmt: skip

    rows = [row("defaults", 0, 0.7, 0.81), row("defaults", 1, 0.75, 0.80),
            row("v", 0, 0.78, 0.83), row("v", 1, 0.8, 0.81), row("v", 2, 0.8, 0.9)]  # fmt: skip
    base, v = summarise(rows)
    assert base["variant"] == "defaults" and base["both_vs_defaults"] is None
    assert base["both_minus_aggregates"] == [0.01, 0.0]
    assert v["seeds"] == [0, 1, 2]
    assert v["embedding_minus_aggregates"] == pytest.approx((-0.02 + 0.0 + 0.0) / 3)
    assert v["both_minus_aggregates_mean"] == pytest.approx((0.03 + 0.01 + 0.1) / 3)
    # seed 2 has no baseline: only seeds 0 and 1 compare (+0.02, +0.01)
    assert v["both_vs_defaults"] == pytest.approx(0.015)


def test_a_bad_variant_or_log_stops_before_training(tmp_path: Path) -> None:
    log = tmp_path / "l.jsonl"
    log.write_text("")
    for argv in (
        ["--log", str(log), "--variant", 'x={"model": {"nope": 1}}'],
        ["--log", str(tmp_path / "missing.jsonl")],
        ["--log", str(log), "--variant", "x={}", "--variant", "x={}"],
        ["--log", str(log)],  # no events
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_one_run_trains_and_scores_a_tiny_log(tmp_path: Path) -> None:
    events, split = datasets.renamed_log(generate(SyntheticConfig(users=60, seed=0)))
    path = tmp_path / "tiny.jsonl"
    write_events_jsonl(path, events)
    out = run_one(path, split, spec_for({"train": {"epochs": 1}}, seed=0), repeats=1)
    assert out["epoch_kept"] == 1 and out["seconds"] > 0
    for key in ("embedding", "aggregates", "both"):
        assert 0.0 < out[key] <= 1.0, (key, out)
