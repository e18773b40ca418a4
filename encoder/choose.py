"""Choosing the model's options for a log by measuring them on it: `persona train --choose`.

Which options help depends on the log (README, "The encoder and its quality"): counts of the
top values read by the vector (`ModelConfig.count_top`, `count_hidden`) lift Instacart (a
few hundred users, outcomes that repeat) and cost MovieLens; 128-event windows lift
MovieLens and cost Instacart. A fixed default cannot hold on both, so `choose` measures, on
the training data alone:

1. cut it at ``T'`` = `default_split` of its own span (the rule that put the held-out split
   at ``T``, one level down); nothing at or after ``until_ms`` (``T``) is read;
2. train each candidate on the events before ``T'`` (`train.train`, as the final run does);
3. evaluate each as `persona eval` does (`evaluate_log`: the store's windows at ``T'``,
   outcomes from ``[T', T)``, linear probes over 5 shuffles);
4. keep the candidate whose probe on embedding + aggregates reads the best mean AUC (the
   product's claim: the vector adds to the counts), the first candidate (the defaults)
   unless another beats it by more than `ChooseConfig.margin`.

The caller then trains the chosen candidate on every event before ``T``. Measured at the
held-out split (docs/benchmarks.md, 2026-12-03): the cut ranks the candidates as the split
does on Instacart and MovieLens.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch

from contract.events import Event
from encoder.api import Encoder
from encoder.evaluate_log import LogEvalConfig, default_split, evaluate_log
from encoder.features import Profile
from encoder.tokenizer import Tokenizer
from encoder.train import EventSource, TrainSpec, stream, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChooseConfig:
    # counts of the top types and values over the window and its spans, with an MLP over them
    count_top: int = 16
    count_hidden: int = 64
    window: int = 128  # the longer-window candidate's events read per window
    # another candidate replaces the defaults only when its mean AUC is higher by more than
    # this: about the shuffle spread of "both - aggregates" at a few hundred users (0.002)
    margin: float = 0.003


@dataclass(frozen=True)
class Candidate:
    name: str
    spec: TrainSpec


def candidates(spec: TrainSpec, cfg: ChooseConfig = ChooseConfig()) -> list[Candidate]:
    """The defaults (``spec`` as given) first, then counts in the vector, then longer
    windows: each one change from ``spec``."""
    counts = replace(spec.model, count_top=cfg.count_top, count_hidden=cfg.count_hidden)
    with_counts = replace(spec, model=counts)
    w = cfg.window
    longer = replace(
        spec,
        tokenizer=replace(spec.tokenizer, max_events=w),
        model=replace(spec.model, max_events=w),
        train=replace(spec.train, train_max_events=w),
    )
    return [
        Candidate("defaults", spec),
        Candidate(f"counts (top {cfg.count_top}, hidden {cfg.count_hidden})", with_counts),
        Candidate(f"windows of {w} events", longer),
    ]


def choose(
    source: EventSource,
    options: list[Candidate],
    until_ms: int | None,
    cfg: ChooseConfig = ChooseConfig(),
) -> tuple[Candidate, dict[str, Any]]:
    """The candidate to train (see the module docstring) and the report of the choice (kept
    in the version's metrics as ``choice``). A candidate that cannot be trained or evaluated
    on the cut (too few events) is skipped, with its reason in the report; when none can
    be, the first (the defaults) is kept."""
    t0 = time.perf_counter()

    def before() -> Iterable[Event]:
        return stream(source, until_ms)

    prof = Profile().add_all(before())
    if prof.first_ts is None or prof.last_ts is None:
        raise ValueError("no events to train on")
    end = until_ms if until_ms is not None else prof.last_ts + 1
    cut = default_split(prof.first_ts, end - 1)
    eval_cfg = LogEvalConfig(split_at=cut, horizon_ms=end - cut)
    scores: dict[str, Any] = {}
    for c in options:
        try:
            scores[c.name] = _measure(c, before, cut, eval_cfg)
        except ValueError as exc:  # e.g. no events before the cut, no outcome to probe
            scores[c.name] = {"skipped": str(exc)}
        log.info("choice: %s %s", c.name, scores[c.name])
    best = options[0]
    base = scores[best.name].get("both", -math.inf)
    for c in options[1:]:
        got = scores[c.name].get("both", -math.inf)
        if got > base + cfg.margin and got > scores[best.name].get("both", -math.inf):
            best = c
    report = {
        "cut_at_ms": cut,
        "outcomes_until_ms": end,
        "criterion": f"mean AUC, embedding + aggregates; defaults unless beaten by {cfg.margin}",
        "candidates": scores,
        "chosen": best.name,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return best, report


def _measure(c: Candidate, before: Any, cut: int, eval_cfg: LogEvalConfig) -> dict[str, float]:
    spec = replace(c.spec, train=replace(c.spec.train, progress=False))
    trained = train(before, spec, until_ms=cut)
    enc = Encoder(c.name, trained.model, Tokenizer(trained.tokenizer), torch.device("cpu"))
    report = evaluate_log(enc.encode_rows, trained.tokenizer, before, eval_cfg)
    if not report["outcomes"]:
        raise ValueError(f"no outcome with {eval_cfg.min_class}+ users of each class at the cut")
    out = {k: round(float(v), 4) for k, v in report["mean_auc"].items()}
    return {**out, "users": int(report["split"]["users"])}
