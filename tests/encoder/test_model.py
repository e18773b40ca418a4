"""Model: shapes, unit vectors, padding never changes a vector, batching order-free."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from encoder.api import Encoder, length_buckets
from encoder.model import ModelConfig, UserEncoder, make_kjt
from encoder.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def setup(tiny_model):  # type: ignore[no-untyped-def]
    model, tok, windows, now = tiny_model  # conftest.py
    return model, Tokenizer(tok), windows, now


def test_shapes_and_norms(setup) -> None:  # type: ignore[no-untyped-def]
    model, tok, windows, now = setup
    with torch.inference_mode():
        z = model.encode_batch(tok.encode(windows, now))
    assert z.shape == (len(windows), 64) and bool(torch.isfinite(z).all())
    assert (z[0] - z[1]).abs().max() > 1e-3
    # the default vector keeps its length (it carries counts); unit vectors on request
    unit = UserEncoder(model.tok, replace(model.cfg, normalize=True)).eval()
    unit.load_state_dict(model.state_dict())
    with torch.inference_mode():
        zu = unit.encode_batch(tok.encode(windows, now))
    assert torch.allclose(zu.norm(dim=1), torch.ones(len(windows)), atol=1e-5)
    torch.testing.assert_close(zu, torch.nn.functional.normalize(z, dim=-1), atol=1e-5, rtol=0)


def test_padding_never_changes_a_vector(setup) -> None:  # type: ignore[no-untyped-def]
    model, tok, windows, now = setup
    short = min(windows, key=len)
    longest = max(windows, key=len)
    assert len(short) < len(longest)
    with torch.inference_mode():
        alone = model.encode_batch(tok.encode([short], now))
        padded = model.encode_batch(tok.encode([short, longest], now))[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)


def test_encoder_api_matches_reference_and_keeps_order(setup) -> None:  # type: ignore[no-untyped-def]
    model, tok, windows, now = setup
    enc = Encoder.from_model(model)
    enc.max_tokens = 200  # force several length buckets
    got = enc.encode(windows, now)
    with torch.inference_mode():
        ref = np.concatenate([model.encode_batch(tok.encode([w], now)).numpy() for w in windows])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    empty = enc.encode([[], windows[0]], now)
    assert np.all(empty[0] == 0) and np.linalg.norm(empty[1]) > 0


def test_age_matters(setup) -> None:  # type: ignore[no-untyped-def]
    model, tok, windows, now = setup
    with torch.inference_mode():
        a = model.encode_batch(tok.encode(windows[:1], now))
        b = model.encode_batch(tok.encode(windows[:1], now + 30 * 86_400_000))
    assert (a - b).abs().max() > 1e-4


def test_length_buckets_cover_all_once() -> None:
    lengths = [5, 200, 3, 64, 64, 1, 0, 150]
    groups = length_buckets(lengths, max_tokens=256, max_batch=3)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(lengths)))
    for g in groups:
        assert (len(g) <= 3 and len(g) * max(max(lengths[i] for i in g), 1) <= 256) or len(g) == 1


@pytest.mark.parametrize(
    ("count_top", "count_hidden", "manner", "count_dims"),
    [(0, 0, False, 0), (8, 0, False, 0), (8, 16, False, 0), (0, 0, True, 0), (8, 0, False, 8)],
)
def test_prefix_vectors_end_at_the_vector_and_survive_old_events(
    setup, count_top, count_hidden, manner, count_dims
) -> None:  # type: ignore[no-untyped-def]
    """Training's prefix vectors (running sums; a prefix's decayed bags weigh its events by
    age at the prefix's own time; outcome counts of the events up to the prefix) end at
    `forward`'s vector when it is encoded at the newest event's time, and stay finite for
    events older than exp() can weigh."""
    _, tok, windows, _ = setup
    torch.manual_seed(1)
    cfg = ModelConfig(
        d_model=32,
        n_heads=4,
        d_ff=64,
        decays_h=(24.0,),
        count_top=count_top,
        count_hidden=count_hidden,
        manner_bag=manner,
        count_dims=count_dims,
    )
    model = UserEncoder(tok.config, cfg)
    model.eval()
    w = max(windows, key=len)[-12:]
    newest = w[-1].ts_ms
    for at in (newest, newest + 400 * 86_400_000):  # 400 days on, the daily bag underflows
        batch = tok.encode([w], at)
        kjt = make_kjt(batch, model.keys, torch.device("cpu"))
        lengths, ages = torch.from_numpy(batch.lengths), torch.from_numpy(batch.age_h)
        with torch.inference_mode():
            h, pad, z, bags = model(kjt, lengths, ages)
            prefix = model.prefix_vectors(h, pad, bags)[0]  # (T, E)
        assert prefix.shape == (len(w), 64) and bool(torch.isfinite(prefix).all())
        if at == newest:
            torch.testing.assert_close(prefix[-1], z[0], atol=1e-4, rtol=1e-4)


def test_fast_paths_equal_the_reference_modules(setup) -> None:  # type: ignore[no-untyped-def]
    """The fused causal attention equals `nn.TransformerEncoder` with causal and key-padding
    masks on every real position, and the fused table lookup equals the per-table one."""
    model, tok, windows, now = setup
    fresh = UserEncoder(model.tok, model.cfg).eval()
    fresh.load_state_dict(model.state_dict())
    batch = tok.encode(windows, now)  # windows of different lengths: padded positions
    kjt = make_kjt(batch, fresh.keys, torch.device("cpu"))
    lengths, age = torch.from_numpy(batch.lengths), torch.from_numpy(batch.age_h)
    with torch.inference_mode():
        x, pad, _ = fresh.embed(kjt, lengths, age)
        t = x.shape[1]
        causal = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        pad_f = torch.zeros_like(pad, dtype=x.dtype).masked_fill(pad, float("-inf"))
        ref = fresh.encoder(x, mask=causal, src_key_padding_mask=pad_f)
        got = fresh.layers(x)
        assert bool(pad.any())
        torch.testing.assert_close(got[~pad], ref[~pad], atol=1e-5, rtol=0)
        per_table = fresh.encode_batch(batch)
        fresh.fuse_tables()
        fused = fresh.encode_batch(batch)
    torch.testing.assert_close(fused, per_table, atol=1e-5, rtol=0)
    # the tables are views of the fused matrix: the weights saved are unchanged
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, atol=0, rtol=0)


def test_outcome_counts_count_the_top_values_and_keep_padding_out(setup) -> None:  # type: ignore[no-untyped-def]
    """`count_top`: the vector reads log counts of the top types/values of its window; a
    padded window gives the same vector, and the counts are those of the window's events."""
    model, tok, windows, now = setup
    counted = UserEncoder(model.tok, replace(model.cfg, count_top=8, count_hidden=16)).eval()
    assert counted.counts is not None and counted.counts.size > 0
    short, longest = min(windows, key=len), max(windows, key=len)
    with torch.inference_mode():
        alone = counted.encode_batch(tok.encode([short], now))
        padded = counted.encode_batch(tok.encode([short, longest], now))[:1]
        batch = tok.encode([short], now)
        ind = counted.counts.indicators(torch.from_numpy(batch.ids))  # (N, Y)
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)
    type_ids = tok.encode([short], now).ids[0]
    top_type = int(np.bincount(type_ids).argmax())  # the window's most frequent type id
    slot0 = counted.counts.lut0[top_type]  # its outcome column + 1 (0: not counted)
    if int(slot0) > 0:
        assert int(ind[:, int(slot0) - 1].sum()) == int((type_ids == top_type).sum())


@pytest.mark.parametrize("lengths", [[3, 0, 5, 1], [4, 4], [0, 0]])
def test_events_are_placed_alike_by_the_gather_and_the_training_scatter(lengths) -> None:  # type: ignore[no-untyped-def]
    """Inference places the events by a gather (one compiled graph for every shape),
    training by a masked scatter (cheaper backward): the same (B, T, ...) either way, with
    empty windows, windows all of one length and a batch without events."""
    from encoder.model import _rows_at, positions

    n = torch.tensor(lengths)
    ar = positions(n)
    real = ar.unsqueeze(0) < n.unsqueeze(1)
    at = (torch.cumsum(n, 0) - n).unsqueeze(1) + ar.unsqueeze(0)
    flat = torch.randn(int(n.sum()), 3)
    gathered = _rows_at(flat, at, real)
    scattered = _rows_at(flat.clone().requires_grad_(True), at, real)
    assert scattered.requires_grad and gathered.shape == (len(lengths), len(ar), 3)
    torch.testing.assert_close(gathered, scattered.detach(), rtol=0, atol=0)
    assert not gathered[~real].any()  # padding is zero
    assert torch.equal(gathered[real], flat)  # each event once, in window order


def test_a_version_saved_before_counts_in_vector_keeps_its_counts_in_the_vector() -> None:
    """model.json without `counts_in_vector` (saved when counts always fed the vector) loads
    with it True; a new one round-trips."""
    import json

    old = json.loads(ModelConfig(count_top=16).to_json())
    del old["counts_in_vector"]
    assert ModelConfig.from_json(json.dumps(old)).counts_in_vector
    new = ModelConfig(count_top=8, counts_in_vector=False, decays_h=(24.0,))
    assert ModelConfig.from_json(new.to_json()) == new
