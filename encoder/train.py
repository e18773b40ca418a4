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
5. train with AdamW on length-bucketed batches; after every epoch measure the validation
   loss. When it does not improve, go back to the best epoch's weights and cut the learning
   rate (`Schedule`); stop after `patience` cuts without improvement. The best epoch's
   weights are kept; the metrics say which epoch that was and why training stopped.

Deterministic under `TrainConfig.seed` on a given machine and thread count.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from contract.events import Event
from encoder.eventlog import EventLog, build_log
from encoder.features import FeaturesFile, Profile, SpecOptions, spec_from_profile
from encoder.fitting import BestEpoch, Schedule, cut_times, plan_batches
from encoder.model import Bags, ModelConfig, UserEncoder, make_kjt
from encoder.objectives import Batch, ObjectiveConfig, TrainingHeads, make_batch
from encoder.outcomes import OutcomeSpace
from encoder.propensity import OutcomeHeads, calibrate
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


class _Run:
    """The model, heads and data of one training run (forward + loss of one batch)."""

    def __init__(self, spec: TrainSpec, tok: Tokenizer, evlog: EventLog, end_ms: int) -> None:
        self.spec, self.tok, self.log, self.end = spec, tok, evlog, end_ms
        self.rng = np.random.default_rng(spec.train.seed + 7)
        self.space = OutcomeSpace.from_spec(
            tok.config.features, spec.objectives.top_types, spec.objectives.top_values
        )
        self.model = UserEncoder(tok.config, spec.model)
        self.heads = TrainingHeads(
            tok,
            self.space,
            spec.objectives,
            spec.model.d_model,
            spec.model.out_dim,
            spec.model.normalize,
        )

    def forward(
        self, users: np.ndarray, nows: np.ndarray
    ) -> tuple[Batch, torch.Tensor, torch.Tensor, torch.Tensor, Bags]:
        """The batch of these (user, now) examples and the model's (h, pad, z, bags)."""
        b = make_batch(
            self.log,
            self.tok,
            self.space,
            self.spec.objectives,
            users,
            nows,
            self.spec.train.train_max_events,
            self.end,
            self.spec.train.window_ms,
        )
        tb = b.tokens
        p = self.spec.train.feature_dropout
        n_cats = len(self.tok.config.features.categorical)
        if self.model.training and p > 0 and n_cats:
            cats = tb.ids[1 : 1 + n_cats]  # (C, N)
            drop = self.rng.random(cats.shape) < p
            cats[drop] = 0
        kjt = make_kjt(tb, self.model.keys, torch.device("cpu"))
        h, pad, z, raw = self.model(kjt, torch.from_numpy(tb.lengths), torch.from_numpy(tb.age_h))
        return b, h, pad, z, raw

    def loss(
        self, users: np.ndarray, nows: np.ndarray, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        b, h, pad, z, raw = self.forward(users, nows)
        w_prefix = self.spec.objectives.w_prefix
        z_prefix = self.model.prefix_vectors(h, pad, raw) if w_prefix > 0 else None
        return self.heads.loss(h, pad, z, b, gen, z_prefix)


def _val_loss(
    run: _Run, users: np.ndarray, nows: np.ndarray, batches: list[np.ndarray]
) -> tuple[float, dict[str, float]]:
    """Mean validation loss (and its parts) in eval mode, the same negatives every time."""
    run.model.eval()
    run.heads.eval()
    gen = torch.Generator().manual_seed(12345)
    total, n = 0.0, 0
    parts: dict[str, float] = {}
    with torch.no_grad():
        for idx in batches:
            loss, p = run.loss(users[idx], nows[idx], gen)
            total += float(loss) * len(idx)
            for k, v in p.items():
                parts[k] = parts.get(k, 0.0) + v * len(idx)
            n += len(idx)
    run.model.train()
    run.heads.train()
    return total / max(n, 1), {k: round(v / max(n, 1), 4) for k, v in parts.items()}


def _outcome_heads(
    run: _Run, users: np.ndarray, nows: np.ndarray, batches: list[np.ndarray]
) -> OutcomeHeads:
    """The vector's outcome heads, calibrated on the validation examples (`propensity`)."""
    run.model.eval()
    zs, ys, oks = [], [], []
    with torch.no_grad():
        for idx in batches:
            b, _, _, z, _ = run.forward(users[idx], nows[idx])
            zs.append(z.float().numpy())
            ys.append(b.p_horizon.numpy() > 0.5)
            oks.append(b.p_horizon_ok.numpy())
    e = run.spec.model.out_dim
    k, y = run.heads.k, run.heads.y
    hz, scale = run.heads.vec_hz, float(run.heads.scale.detach())
    return calibrate(
        run.space.names,
        tuple(int(h) for h in run.spec.objectives.horizons_ms),
        hz.weight.detach().numpy() * scale,
        hz.bias.detach().numpy(),
        np.concatenate(zs) if zs else np.zeros((0, e), np.float32),
        np.concatenate(ys) if ys else np.zeros((0, k, y), bool),
        np.concatenate(oks) if oks else np.zeros((0, k), bool),
    )


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
) -> Trained:
    """Train a model (see `Trained`; ``log.raw`` holds `keep_raw` users' newest events).

    Args:
        events: a sequence, or a function returning a fresh stream (read twice).
        spec: configs; empty ``spec.tokenizer.features`` means "discover them".
        data_end_ms: the end of the data (default: ``until_ms - 1``, else the newest event).
        until_ms: train only on events before this time (the evaluation split).
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
    run = _Run(spec, tok, evlog, end)
    model, heads = run.model, run.heads
    params = list(model.parameters()) + list(heads.parameters())
    tables = list(model.ec.parameters()) + list(heads.value_out.parameters())
    ids = {id(p) for p in tables}
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if id(p) not in ids], "lr": tc.lr},
        {"params": tables, "lr": tc.lr * tc.table_lr_mult, "weight_decay": tc.table_weight_decay},
    ]
    opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
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
    from encoder.progress import progress_bar

    bar = progress_bar(total_steps, "train", tc.progress)
    history: list[float] = []
    val_history: list[float] = []
    parts: dict[str, float] = {}
    best: BestEpoch | None = None
    stop = f"ran all {len(plan)} epochs"
    model.train()
    heads.train()
    t1 = time.perf_counter()
    epochs_run = 0
    for epoch in range(len(plan)):
        for idx in plan[epoch]:
            loss, parts = run.loss(tr_u[idx], tr_now[idx], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            sched.before_step()
            opt.step()
            sched.after_step()
            history.append(float(loss.detach()))
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(history[-20:]):.3f}")
            bar.update(1)
        epochs_run = epoch + 1
        if not val_plan:
            continue
        vl, vparts = _val_loss(run, va_u, va_now, val_plan)
        val_history.append(round(vl, 4))
        log.info("epoch %d: validation loss %.4f %s", epoch + 1, vl, vparts)
        if best is None or vl < best.loss:
            best = BestEpoch(vl, epoch, model, heads, opt)
        elif sched.plateau:
            if sched.cuts >= tc.patience:
                stop = f"validation loss stopped improving after {sched.cuts} learning-rate cuts"
                break
            best.restore(model, heads, opt)  # go on from the best epoch, more slowly
            sched.cut()
        elif epoch - best.epoch >= tc.patience:
            stop = f"validation loss did not improve for {tc.patience} epochs"
            break
    bar.close()
    kept = epochs_run - 1
    if best is not None:
        best.restore(model, heads, None)
        kept = best.epoch
    outcomes = _outcome_heads(run, va_u, va_now, val_plan)
    model.eval()
    metrics: dict[str, Any] = {
        "users": n_users,
        "events": evlog.n_events,
        "examples": len(tr_u),
        "validation_users": n_val,
        "validation_examples": len(va_u),
        "steps": len(history),
        "epochs_run": epochs_run,
        "epoch_kept": kept + 1,
        "stopped": stop,
        "kept_because": (
            "lowest validation loss"
            if best is not None
            else f"last epoch (no validation split: fewer than {tc.min_val_users} validation users)"
        ),
        "validation_loss": val_history,
        "train_seconds": round(time.perf_counter() - t1, 2),
        "loss_first": round(float(np.mean(history[:20])), 4) if history else None,
        "loss_last": round(float(np.mean(history[-20:])), 4) if history else None,
        "loss_parts_last": {k: round(v, 4) for k, v in parts.items()},
        "outcomes": list(run.space.names),
        "calibration": outcomes.report,
        "data_end_ms": end,
        "until_ms": until_ms,
        "seed": tc.seed,
    }
    return Trained(model, tok_cfg, metrics, evlog, outcomes)
