"""Training: an event stream in, a trained `UserEncoder` (plus tokenizer config and metrics) out.

Order of work:

1. profile the events and discover the feature spec (`encoder/features.py`), unless the
   spec already names one; one streaming pass;
2. tokenize the events into an `EventLog` (second streaming pass; events at or after
   ``until_ms`` are left out: they belong to the evaluation split);
3. hold out a validation share of the users (when there are enough);
4. cut each user's history at a few times ``now`` (one at the end of the data, the rest
   uniform in time, more cuts per user for small logs); the window is the last events up to
   the cut and the targets come from the events after it (`encoder/objectives.py`);
5. train on length-bucketed batches (AdamW; `encoder/parallel.py` says where the steps run:
   one process, or several under torchrun with the tables sharded); after every epoch
   measure the validation loss and, with a checkpoint directory, save the run's state
   (`encoder/checkpoint.py`; the same run started again resumes there). When the loss
   does not improve, go back to the best epoch's weights and cut the learning rate
   (`Schedule`); stop after `patience` cuts without improvement. The best epoch's
   weights are kept; the metrics say which epoch that was and why training stopped.

Deterministic under `TrainConfig.seed` on a given machine and thread count.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from contract.events import Event
from encoder.checkpoint import Checkpoint, Progress
from encoder.eventlog import EventLog, build_log
from encoder.features import FeaturesFile, Profile, SpecOptions, spec_from_profile
from encoder.fitting import BestEpoch, Schedule, cut_times, plan_batches
from encoder.model import ModelConfig, UserEncoder
from encoder.objectives import ObjectiveConfig
from encoder.parallel import Local
from encoder.propensity import OutcomeHeads
from encoder.steps import Run, outcome_heads, val_loss
from encoder.tokenizer import Tokenizer, TokenizerConfig

log = logging.getLogger(__name__)

EventSource = Sequence[Event] | Callable[[], Iterable[Event]]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8  # at most: early stopping on the validation loss decides
    patience: int = 2  # learning-rate cuts (or epochs, one-cycle) without a better validation
    schedule: Literal["plateau", "one_cycle"] = "plateau"
    lr_cut: float = 0.3  # plateau: the learning rate's factor when validation stops improving
    val_share: float = 0.1  # users held out for validation ...
    min_val_users: int = 20  # ... when that is at least this many
    batch_size: int = 64
    lr: float = 2e-3
    table_lr_mult: float = 1.0  # tables' step over the dense step (5.0 overfit rare values)
    weight_decay: float = 0.01
    table_weight_decay: float = 0.0
    cuts_per_user: int = 2  # time-uniform cuts, plus one at the end of the data ...
    min_examples: int = 4000  # ... raised for small logs to reach this many windows ...
    max_cuts_per_user: int = 16  # ... up to this many
    train_max_events: int = 64  # windows in training (the model serves up to max_events)
    window_ms: int | None = None  # training windows hold no older events (as the store's)
    feature_dropout: float = 0.1  # share of categorical values hidden (set absent) in training
    max_steps: int | None = None  # stop after this many steps (benchmarks of the data path)
    # the input tables' optimizer: AdamW with the rest, or row-wise Adagrad (what a sharded
    # run on CPUs uses: fbgemm's CPU kernels have no fused Adam), stepping at
    # lr * table_lr_mult * adagrad_lr_mult (Adagrad's steps shrink as its sums grow)
    table_optimizer: Literal["adamw", "rowwise_adagrad"] = "adamw"
    adagrad_lr_mult: float = 5.0
    # the outcome heads kept in the version: refitted on the final vectors of (a sample of)
    # the training examples (`propensity.refit`) before calibration; False: the trained ones
    refit_heads: bool = True
    # what the heads are Platt-calibrated on: the validation users at fixed times a day
    # apart ("fixed": the population a held-out split scores) or at their training cuts
    calibrate_at: Literal["fixed", "cuts"] = "fixed"
    # >= 2: the calibration also sees training users at the same fixed times, scored by
    # heads refitted without their fold (cross-fitting; `steps._out_of_fold`); 0: off.
    # Instacart: held-out ECE 0.043 -> 0.040 (its 59 validation users alone are few);
    # synthetic seed 1: 0.0293 -> 0.0294 (noise). See README "Outcome propensities".
    calibrate_crossfit: int = 5
    # fit the short-term head (`encoder/shortterm_fit.py`) on the final encoder and keep it
    # in the version: serving adds what the events since the last refresh change
    short_term: bool = True
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class TrainSpec:
    """Everything that defines a training run (saved with the version). An empty
    ``tokenizer.features`` means "discover the features from the events"."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    spec_options: SpecOptions = field(default_factory=SpecOptions)
    features_file: FeaturesFile | None = None


def stream(source: EventSource, until_ms: int | None = None) -> Iterator[Event]:
    """One pass over `source` (a sequence, or a function that opens a new stream)."""
    it = source() if callable(source) else iter(source)
    if until_ms is None:
        return iter(it)
    return (e for e in it if e.ts_ms < until_ms)


def group_by_user(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Events per user in window order (sorted by ts, event id), duplicates by id dropped."""
    out: dict[str, dict[str, Event]] = {}
    for e in events:
        out.setdefault(e.user_id, {})[e.event_id] = e
    return {u: sorted(d.values(), key=Event.sort_key) for u, d in sorted(out.items())}


class Trained(NamedTuple):
    """What `train` returns: the model (eval mode), its tokenizer config, the metrics, the
    tokenized log (its ``raw`` holds the parity sample) and the calibrated outcome heads."""

    model: UserEncoder
    tokenizer: TokenizerConfig
    metrics: dict[str, Any]
    log: EventLog
    outcomes: OutcomeHeads


def train(
    events: EventSource,
    spec: TrainSpec,
    data_end_ms: int | None = None,
    until_ms: int | None = None,
    keep_raw: int = 0,
    parallel: Local | None = None,
    checkpoint_dir: Path | None = None,
) -> Trained:
    """Train a model (see `Trained`; ``log.raw`` holds `keep_raw` users' newest events).

    Args:
        events: a sequence, or a function returning a fresh stream (read twice).
        spec: configs; empty ``spec.tokenizer.features`` means "discover them".
        data_end_ms: the end of the data (default: ``until_ms - 1``, else the newest event).
        until_ms: train only on events before this time (the evaluation split).
        parallel: where the steps run (`encoder/parallel.py`): one process by default, or
            `Sharded` in every rank of a process group (each rank reads the whole stream).
        checkpoint_dir: after every epoch the run's state goes here; a run started with
            the same spec, data and process count resumes after the last saved epoch.
    """
    tc = spec.train
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    t0 = time.perf_counter()
    tok_cfg = spec.tokenizer
    if not tok_cfg.features.event_types:
        profile = Profile(tc.seed).add_all(stream(events, until_ms))
        if profile.events == 0:
            raise ValueError("no events to train on")
        tok_cfg = replace(
            tok_cfg, features=spec_from_profile(profile, spec.spec_options, spec.features_file)
        )
    tok = Tokenizer(tok_cfg)
    evlog = build_log(stream(events, until_ms), tok, keep_raw=keep_raw)
    if evlog.n_events == 0:
        raise ValueError("no events to train on")
    end = (
        data_end_ms
        if data_end_ms is not None
        else (until_ms - 1 if until_ms is not None else evlog.end_ms)
    )
    n_users = len(evlog.users)
    perm = rng.permutation(n_users)
    n_val = round(tc.val_share * n_users)
    if n_val < tc.min_val_users:
        n_val = 0
    val_users, train_users = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    horizon = max(spec.objectives.horizons_ms)
    cuts = int(
        np.clip(
            math.ceil(tc.min_examples / max(n_users, 1)) - 1,
            tc.cuts_per_user,
            max(tc.cuts_per_user, tc.max_cuts_per_user),
        )
    )
    tr_u, tr_now = cut_times(evlog, train_users, cuts, horizon, end, tc.seed)
    va_u, va_now = cut_times(evlog, val_users, cuts, horizon, end, tc.seed + 1)
    maxe = tc.train_max_events
    wms = tc.window_ms
    tr_len = np.subtract(*evlog.window_bounds(tr_u, tr_now, maxe, horizon_ms=wms)[::-1])
    va_len = np.subtract(*evlog.window_bounds(va_u, va_now, maxe, horizon_ms=wms)[::-1])
    log.info(
        "%d users, %d examples (%d cuts each), %d validation users, prepared in %.1fs",
        n_users,
        len(tr_u),
        cuts + 1,
        n_val,
        time.perf_counter() - t0,
    )
    where = parallel or Local()
    run = Run(spec, tok, evlog, end, where)
    opt, params = where.setup(run.step, tc)
    plan = [plan_batches(tr_len, tc.batch_size, rng) for _ in range(tc.epochs)]
    if tc.max_steps is not None:  # keep the first max_steps batches
        budget, capped = tc.max_steps, []
        for p in plan:
            capped.append(p[:budget])
            budget -= len(capped[-1])
        plan = [p for p in capped if len(p)]
    val_plan = plan_batches(va_len, tc.batch_size, np.random.default_rng(0))
    total_steps = sum(len(p) for p in plan)
    sched = Schedule(opt, tc.lr_cut, plan, plateau=tc.schedule == "plateau" and bool(val_plan))
    state = Progress(stop=f"ran all {len(plan)} epochs")
    ckpt = Checkpoint(checkpoint_dir, spec, where.world, len(tr_u)) if checkpoint_dir else None
    if ckpt is not None and ckpt.resume(state, where, sched):
        log.warning("resuming from %s after epoch %d", ckpt.path, state.epochs_run)
    resumed_steps = len(state.history)  # steps a checkpoint restored, not trained by this run
    from encoder.progress import progress_bar

    bar = progress_bar(total_steps, "train", tc.progress and where.rank == 0)
    bar.update(sum(len(p) for p in plan[: state.epochs_run]))
    parts: dict[str, float] = {}
    where.net.train()
    t1 = time.perf_counter()
    for epoch in range(state.epochs_run, len(plan) if not state.done else 0):
        run.epoch_seed(epoch, gen)
        for batch in plan[epoch]:
            idx = where.part(batch)
            if idx is None:
                continue
            loss, parts = run.loss(tr_u[idx], tr_now[idx], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            sched.before_step()
            opt.step()
            sched.after_step()
            state.history.append(float(loss.detach()))
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(state.history[-20:]):.3f}")
            bar.update(1)
        state.epochs_run = epoch + 1
        if val_plan:
            vl, vparts = val_loss(run, va_u, va_now, val_plan)
            state.val_history.append(round(vl, 4))
            log.info("epoch %d: validation loss %.4f %s", epoch + 1, vl, vparts)
            best = state.best
            if best is None or vl < best.loss:
                state.best = BestEpoch(vl, epoch, where.weights(), where.opt_state())
            elif sched.plateau:
                if sched.cuts >= tc.patience:
                    state.stop = (
                        f"validation loss stopped improving after {sched.cuts} learning-rate cuts"
                    )
                    state.done = True
                else:
                    best.restore(where, with_opt=True)  # go on from the best epoch, more slowly
                    sched.cut()
            elif epoch - best.epoch >= tc.patience:
                state.stop = f"validation loss did not improve for {tc.patience} epochs"
                state.done = True
        if ckpt is not None:
            ckpt.save(state, where, sched)
        if state.done:
            break
    bar.close()
    kept = state.epochs_run - 1
    if state.best is not None:
        state.best.restore(where, with_opt=False)
        kept = state.best.epoch
    final = where.final().cpu().eval()
    run.model, run.heads = final.model, final.heads
    model, hist = final.model, state.history
    train_examples = (tr_u, tr_now) if tc.refit_heads else None
    outcomes = outcome_heads(
        run, va_u, va_now, val_plan, train_examples, tc.calibrate_at, tc.calibrate_crossfit
    )
    metrics: dict[str, Any] = {
        "users": n_users,
        "events": evlog.n_events,
        "examples": len(tr_u),
        "validation_users": n_val,
        "validation_examples": len(va_u),
        "steps": len(state.history),
        "steps_resumed": resumed_steps,
        "epochs_run": state.epochs_run,
        "epoch_kept": kept + 1,
        "stopped": state.stop,
        "kept_because": (
            "lowest validation loss"
            if state.best is not None
            else f"last epoch (no validation split: fewer than {tc.min_val_users} validation users)"
        ),
        "validation_loss": state.val_history,
        "train_seconds": round(time.perf_counter() - t1, 2),
        "loss_first": round(float(np.mean(hist[:20])), 4) if hist else None,
        "loss_last": round(float(np.mean(hist[-20:])), 4) if hist else None,
        "loss_parts_last": {k: round(v, 4) for k, v in parts.items()},
        "outcomes": list(run.space.names),
        "calibration": outcomes.report,
        "data_end_ms": end,
        "until_ms": until_ms,
        "seed": tc.seed,
        "processes": where.world,
        "table_optimizer": where.table_optimizer,
    }
    return Trained(model, tok_cfg, metrics, evlog, outcomes)
