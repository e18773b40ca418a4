"""Training targets (`encoder/objectives.py`): the multi-horizon targets of positions
inside a group of events that share one timestamp (an order's lines in a day-resolution
log)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

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
