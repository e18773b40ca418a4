"""Small train, then eval on held-out users: the embedding beats random lookalikes clearly."""

from __future__ import annotations

from dataclasses import replace

from encoder.api import Encoder
from encoder.evaluate import EvalConfig, evaluate, format_table
from encoder.synthetic import SyntheticConfig, generate
from encoder.train import TrainSpec, train


def test_train_then_eval_quality_ordering(tiny_spec: TrainSpec) -> None:
    world = SyntheticConfig(users=400, events_per_user=40.0, seed=5, items=400, campaigns=48)
    ds = generate(world)
    train_cfg = replace(tiny_spec.train, epochs=6, batch_size=16, cuts_per_user=1, lr=5e-3)
    spec = replace(tiny_spec, train=train_cfg)
    model, tok, metrics, _, _ = train(ds.events, spec, ds.config.end_ms)
    assert metrics["loss_last"] < metrics["loss_first"]
    enc = Encoder.from_model(model)
    cfg = EvalConfig(users=240, events_per_user=40.0, folds=3, max_events=64, world=world)
    report = evaluate(enc.encode, cfg, tok.event_types)
    table = format_table(report)
    emb, rnd = report["embedding"], report["random"]
    assert emb["precision_at_10"] > rnd["precision_at_10"] + 0.15, table
    # a few hundred steps of a tiny model: the outcome probes are only asked to beat chance
    assert max(emb["auc_churns"], emb["auc_converts"]) > 0.6, table
