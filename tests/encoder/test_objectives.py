"""Training targets (`encoder/objectives.py`): the multi-horizon targets of positions
inside a group of events that share one timestamp (an order's lines in a day-resolution
log)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from contract.events import Event
from encoder.eventlog import build_log
from encoder.features import SpecOptions, discover
from encoder.objectives import ObjectiveConfig, make_batch
from encoder.outcomes import OutcomeSpace
from encoder.tokenizer import HOUR, Tokenizer, TokenizerConfig

T0 = 1_700_000_000_000


def _batch(obj: ObjectiveConfig):  # type: ignore[no-untyped-def]
    # one order of three lines at T0, a second order of two lines 30 minutes later, then
    # a line 3 hours later
    lines = [(T0, "a"), (T0, "b"), (T0, "c"), (T0 + HOUR // 2, "a"), (T0 + HOUR // 2, "d"),
             (T0 + 3 * HOUR, "e")]  # fmt: skip
    evs = [Event("u", f"e{i}", ts, "line", {"sku": v}) for i, (ts, v) in enumerate(lines)]
    spec = discover(evs, SpecOptions(min_value_count=1, min_events=1))
    tok = Tokenizer(TokenizerConfig(features=spec, max_events=16))
    log = build_log(evs, tok)
    space = OutcomeSpace.from_spec(tok.config.features, obj.top_types, obj.top_values)
    now = np.array([T0 + HOUR // 2])  # the window: both orders, whole
    b = make_batch(log, tok, space, obj, np.array([0]), now, 16, T0 + 100 * HOUR)
    return b, space


def test_a_position_ends_its_time_and_its_horizon_starts_after_it() -> None:
    obj = replace(ObjectiveConfig(), horizons_ms=(HOUR,))
    b, space = _batch(obj)
    assert b.tokens.lengths.tolist() == [5]
    # only the last line of each order is a position with horizon targets
    assert b.horizon_ok[0, :5, 0].tolist() == [False, False, True, False, True]
    sku = {n.split("=")[1]: i for i, n in enumerate(space.names) if n.startswith("sku=")}
    within = b.horizon[0, 2, 0].numpy() > 0.5  # after the first order, within the hour
    assert within[sku["a"]] and within[sku["d"]]
    assert not within[sku["b"]] and not within[sku["c"]]  # its own order is not its future
    assert not (b.horizon[0, 4, 0].numpy() > 0.5).any()  # nothing in the hour after order 2
    # the vector at now: the events after now
    assert b.p_horizon[0, 0].numpy()[sku["e"]] == 0.0  # 3 h later: outside 1 h


def test_without_whole_times_every_position_has_targets_after_its_time() -> None:
    obj = replace(ObjectiveConfig(), horizons_ms=(HOUR,), whole_times=False)
    b, space = _batch(obj)
    assert b.horizon_ok[0, :5, 0].all()
    sku = {n.split("=")[1]: i for i, n in enumerate(space.names) if n.startswith("sku=")}
    first = b.horizon[0, 0, 0].numpy() > 0.5  # the first line: the rest of its order is
    assert not first[sku["b"]] and first[sku["d"]]  # at its own time, not after it


def test_the_residual_objective_trains_the_vector_beside_the_counts(tiny_spec) -> None:  # type: ignore[no-untyped-def]
    """`w_residual`: the vector's horizon targets also through a head that adds the window's
    outcome counts; its loss reaches the vector's weights and both of its heads. The counts
    stay out of the vector (`counts_in_vector` False), so an encode, outside training, does
    not compute them and gives the same vector as the training model."""
    import torch

    from encoder.model import UserEncoder, make_kjt
    from encoder.parallel import Local
    from encoder.steps import Run
    from encoder.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(users=16, events_per_user=30.0, seed=3))
    tok = Tokenizer(TokenizerConfig(features=discover(ds.events), max_events=64))
    assert tiny_spec.model.count_top > 0 and not tiny_spec.model.counts_in_vector
    assert tiny_spec.objectives.w_residual > 0
    torch.manual_seed(0)
    run = Run(tiny_spec, tok, build_log(ds.events, tok), ds.config.end_ms, Local())
    run.where.setup(run.step, tiny_spec.train)
    assert run.heads.residual and run.model.counts_for_loss
    users = np.arange(8)
    nows = np.full(8, ds.config.end_ms - 3 * 86_400_000)
    loss, parts = run.loss(users, nows, torch.Generator().manual_seed(0))
    assert parts["residual"] > 0
    loss.backward()
    for name, p in (("res_hz", run.heads.res_hz.weight), ("cnt_hz", run.heads.cnt_hz.weight),
                    ("proj", run.model.proj.weight)):  # fmt: skip
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    off = replace(tiny_spec, objectives=replace(tiny_spec.objectives, w_residual=0.0))
    torch.manual_seed(0)
    plain = Run(off, tok, build_log(ds.events, tok), ds.config.end_ms, Local())
    plain.where.setup(plain.step, off.train)
    assert not plain.heads.residual and not hasattr(plain.heads, "res_hz")
    assert plain.loss(users, nows, torch.Generator().manual_seed(0))[1]["residual"] == 0
    served = UserEncoder(tok.config, run.model.cfg).eval()
    served.load_state_dict(run.model.state_dict())
    run.model.eval()
    batch = tok.encode([w for _, w in sorted(ds.windows(64).items())][:4], ds.config.end_ms)
    kjt = make_kjt(batch, served.keys, torch.device("cpu"))
    lengths, age = torch.from_numpy(batch.lengths), torch.from_numpy(batch.age_h)
    with torch.inference_mode():
        assert served.lookups(kjt, lengths, age).counted is None
        assert run.model.lookups(kjt, lengths, age).counted is not None
        torch.testing.assert_close(served(kjt, lengths, age)[2], run.model(kjt, lengths, age)[2])


def test_the_counts_own_components_answer_only_to_their_own_head(tiny_spec) -> None:  # type: ignore[no-untyped-def]
    """`count_dims`: the vector's last components are a linear map of the window's counts,
    computed at encode time too; only their own horizon head trains them (with that head
    silenced their map gets no gradient), and every other head reads the rest."""
    import torch

    from encoder.model import UserEncoder, make_kjt
    from encoder.parallel import Local
    from encoder.steps import Run
    from encoder.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(users=16, events_per_user=30.0, seed=3))
    tok = Tokenizer(TokenizerConfig(features=discover(ds.events), max_events=64))
    spec = replace(tiny_spec, model=replace(tiny_spec.model, count_dims=8))
    out = spec.model.out_dim
    torch.manual_seed(0)
    run = Run(spec, tok, build_log(ds.events, tok), ds.config.end_ms, Local())
    run.where.setup(run.step, spec.train)
    heads, model = run.heads, run.model
    assert heads.own_hz is not None and model.count_proj is not None
    assert heads.vec_hz.weight.shape[1] == heads.res_hz.weight.shape[1] == out - 8
    users, nows = np.arange(8), np.full(8, ds.config.end_ms - 3 * 86_400_000)
    loss, parts = run.loss(users, nows, torch.Generator().manual_seed(0))
    assert parts["own_counts"] > 0
    loss.backward()
    for name, p in (("own_hz", heads.own_hz.weight), ("count_proj", model.count_proj.weight),
                    ("proj", model.proj.weight)):  # fmt: skip
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    run.step.zero_grad()
    with torch.no_grad():
        heads.own_hz.weight.zero_()
    run.loss(users, nows, torch.Generator().manual_seed(0))[0].backward()
    assert model.count_proj.weight.grad is not None
    assert float(model.count_proj.weight.grad.abs().sum()) == 0.0
    assert float(model.proj.weight.grad.abs().sum()) > 0  # type: ignore[union-attr]
    served = UserEncoder(tok.config, model.cfg).eval()
    served.load_state_dict(model.state_dict())
    batch = tok.encode([w for _, w in sorted(ds.windows(64).items())][:4], ds.config.end_ms)
    kjt = make_kjt(batch, served.keys, torch.device("cpu"))
    lengths, age = torch.from_numpy(batch.lengths), torch.from_numpy(batch.age_h)
    with torch.inference_mode():
        _, pad, z, bags = served(kjt, lengths, age)
        own = served.count_proj(served.count_features(pad, bags))  # type: ignore[misc]
        assert z.shape == (4, out)
        torch.testing.assert_close(z[:, out - 8 :], own)
        torch.testing.assert_close(served.encode_batch(batch), z)
    with pytest.raises(ValueError, match="normalize off"):  # one norm would mix the parts
        UserEncoder(tok.config, replace(model.cfg, normalize=True))
