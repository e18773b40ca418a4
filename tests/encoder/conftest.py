"""Tiny configs so the encoder tests stay fast on 2 shared cores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from encoder.api import Encoder
from encoder.features import discover
from encoder.model import ModelConfig, UserEncoder
from encoder.synthetic import SyntheticConfig, SyntheticDataset, generate
from encoder.tokenizer import Tokenizer, TokenizerConfig
from encoder.train import TrainConfig, TrainSpec

TINY_SPEC = TrainSpec(
    tokenizer=TokenizerConfig(max_events=64),  # features discovered from the events
    model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, dropout=0.0, max_events=64),
    train=TrainConfig(
        epochs=1,
        batch_size=32,
        train_max_events=32,
        cuts_per_user=1,
        min_examples=0,
        progress=False,
    ),
)


@pytest.fixture(scope="session")
def tiny_spec() -> TrainSpec:
    return TINY_SPEC


def encoder_of(tiny: tuple[Any, ...], **kw: Any) -> Encoder:
    """A CPU `Encoder` of a copy of `tiny_model`'s weights (kw: `Encoder`'s options)."""
    model, tok = tiny[0], tiny[1]
    fresh = UserEncoder(tok, model.cfg)
    fresh.load_state_dict(model.state_dict())
    return Encoder("v", fresh, Tokenizer(tok), torch.device("cpu"), **kw)


@pytest.fixture(scope="module")
def tiny_model():  # type: ignore[no-untyped-def]
    """A small untrained 2-layer model (eval mode) over 24 synthetic users: (model, its
    TokenizerConfig, the users' windows, their end time). One per test module."""
    ds = generate(SyntheticConfig(users=24, events_per_user=30.0, seed=2))
    tok = TokenizerConfig(features=discover(ds.events), max_events=64)
    torch.manual_seed(0)
    model = UserEncoder(tok, ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_events=64))
    windows = [w for _, w in sorted(ds.windows(64).items())]
    return model.eval(), tok, windows, ds.config.end_ms


@pytest.fixture(scope="session")
def small_data() -> SyntheticDataset:
    return generate(SyntheticConfig(users=120, events_per_user=40.0, seed=21))


@pytest.fixture(scope="session")
def registry_with_two(tmp_path_factory: pytest.TempPathFactory, small_data: SyntheticDataset):  # type: ignore[no-untyped-def]
    """A registry holding two versions trained with different seeds (the first is active)."""
    from dataclasses import replace

    from encoder.release import train_version

    models: Path = tmp_path_factory.mktemp("models")
    end = small_data.config.end_ms
    v1, _ = train_version(small_data.events, TINY_SPEC, models, end, parity_n=32)
    spec2 = replace(TINY_SPEC, train=replace(TINY_SPEC.train, seed=1))
    v2, _ = train_version(small_data.events, spec2, models, end, parity_n=32)
    return models, v1, v2
