"""Any schema: a renamed world trains to the same model, a signal planted only in properties
with unfamiliar names reaches the vectors, and a property unseen in training is skipped."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from contract.events import Event
from encoder.api import Encoder
from encoder.datasets import synthetic_log
from encoder.synthetic import SyntheticConfig
from encoder.train import TrainSpec, train


def test_a_renamed_schema_trains_the_same_model(tiny_spec: TrainSpec) -> None:
    cfg = SyntheticConfig(users=80, events_per_user=30.0, seed=8)
    plain, split = synthetic_log(cfg, renames={})
    other, _ = synthetic_log(cfg)
    torch.set_num_threads(1)  # bit-for-bit: one thread
    try:
        m1, t1, _, log1, _ = train(plain, tiny_spec, until_ms=split, keep_raw=5)
        m2, t2, _, log2, _ = train(other, tiny_spec, until_ms=split, keep_raw=5)
    finally:
        torch.set_num_threads(2)
    assert t1.features.property_names != t2.features.property_names
    w1 = [log1.raw[u] for u in sorted(log1.raw)]
    w2 = [log2.raw[u] for u in sorted(log2.raw)]
    v1 = Encoder.from_model(m1).encode(w1, split)
    v2 = Encoder.from_model(m2).encode(w2, split)
    np.testing.assert_allclose(v1, v2, atol=1e-5)


def _planted(users: int, seed: int) -> tuple[list[Event], np.ndarray]:
    """Half the users carry a hidden trait seen only in ``zq_7`` (a string) and ``wx`` (a
    number) on some of their events; every event type and everything else is the same."""
    rng = np.random.default_rng(seed)
    trait = rng.random(users) < 0.5
    out = []
    for u in range(users):
        for i in range(20):
            props: dict[str, str | float] = {"zq_7": f"k{rng.integers(0, 4)}"}
            if trait[u] and i % 2 == 0:
                props = {"zq_7": "k9", "wx": float(rng.normal(50.0, 3.0))}
            else:
                props["wx"] = float(rng.normal(10.0, 3.0))
            out.append(Event(f"p{u}", f"p{u}-{i}", 1_000_000 + 60_000 * (20 * u + i), "ev", props))
    return out, trait


def test_a_signal_in_unfamiliar_properties_reaches_the_vectors(tiny_spec: TrainSpec) -> None:
    from encoder.evaluate_log import probe_auc

    events, trait = _planted(200, 0)
    spec = replace(tiny_spec, train=replace(tiny_spec.train, epochs=2))
    model, tok, _, log, _ = train(events, spec)
    assert set(tok.features.property_names) == {"zq_7", "wx"}
    users = np.arange(len(log.users))
    nows = np.full(len(users), log.end_ms + 1)
    lo, hi = log.window_bounds(users, nows, 64)
    vecs = Encoder.from_model(model).encode_rows(log, lo, hi, nows)
    order = np.array([int(u[1:]) for u in log.users])
    auc = probe_auc(vecs, trait[order].astype(np.int64), folds=3)
    assert auc > 0.9, auc


def test_a_property_unseen_in_training_is_skipped_and_counted(tiny_spec: TrainSpec) -> None:
    events, _ = _planted(40, 1)
    model, _, _, _, _ = train(events, tiny_spec)
    enc = Encoder.from_model(model)
    window = [e for e in events if e.user_id == "p0"]
    before = enc.encode([window], 2_000_000_000)
    extra = [replace(e, props={**e.props, "brand_new": "b1"}) for e in window]
    after = enc.encode([extra], 2_000_000_000)
    np.testing.assert_array_equal(before, after)
    assert enc.tokenizer.take_unknown() == {"brand_new": len(window)}
