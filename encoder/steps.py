"""One training run's model, heads and batches (`Run`: inputs, forward and loss of a batch),
its validation loss and the data that calibrates the outcome heads. `encoder/train.py`
drives the loop; `encoder/parallel.py` says where the steps run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from encoder.eventlog import EventLog
from encoder.model import UserEncoder, make_kjt
from encoder.objectives import Batch, TrainingHeads, batch_to, make_batch
from encoder.outcomes import OutcomeSpace
from encoder.parallel import Local, LossModule
from encoder.propensity import OutcomeHeads, calibrate, refit
from encoder.tokenizer import Tokenizer


class Run:
    """The model, heads and data of one training run (forward + loss of one batch)."""

    def __init__(
        self, spec: Any, tok: Tokenizer, evlog: EventLog, end_ms: int, where: Local
    ) -> None:
        self.spec, self.tok, self.log, self.end, self.where = spec, tok, evlog, end_ms, where
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
            self.model.counts.out_size if self.model.counts is not None else 0,
            spec.model.count_dims,
        )
        self.model.counts_for_loss = self.heads.residual
        self.step = LossModule(self.model, self.heads, spec.objectives.w_prefix)

    def epoch_seed(self, epoch: int, gen: torch.Generator) -> None:
        """Each epoch's randomness from the seed alone (a resumed run repeats it exactly)."""
        seed = self.spec.train.seed + 1000 * epoch
        self.rng = np.random.default_rng(seed + 7 + 7919 * self.where.rank)
        gen.manual_seed(seed + 7919 * self.where.rank)

    def inputs(
        self, users: np.ndarray, nows: np.ndarray, device: torch.device | None = None
    ) -> tuple[Batch, Any, Any, Any]:
        """The batch of these (user, now) examples and the model's inputs, on the device."""
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
        if self.step.training and p > 0 and n_cats:
            cats = tb.ids[1 : 1 + n_cats]  # (C, N)
            drop = self.rng.random(cats.shape) < p
            cats[drop] = 0
        dev = device or self.where.device
        kjt = make_kjt(tb, self.model.keys, dev)
        lengths, age = torch.from_numpy(tb.lengths).to(dev), torch.from_numpy(tb.age_h).to(dev)
        return batch_to(b, dev), kjt, lengths, age

    def loss(
        self, users: np.ndarray, nows: np.ndarray, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        b, kjt, lengths, age = self.inputs(users, nows)
        with self.where.autocast():
            loss, parts = self.where.net(kjt, lengths, age, b, gen)
        return loss, parts


def val_loss(
    run: Run, users: np.ndarray, nows: np.ndarray, batches: list[np.ndarray]
) -> tuple[float, dict[str, float]]:
    """Mean validation loss (and its parts) in eval mode, the same negatives every time
    (summed across ranks: each takes its share of every batch)."""
    run.where.net.eval()
    gen = torch.Generator().manual_seed(12345)
    total, n = 0.0, 0.0
    parts: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            idx = run.where.part(batch)
            if idx is None:
                continue
            loss, p = run.loss(users[idx], nows[idx], gen)
            total += float(loss) * len(idx)
            for k, v in p.items():
                parts[k] = parts.get(k, 0.0) + v * len(idx)
            n += len(idx)
    run.where.net.train()
    names = sorted(parts)
    total, n, *sums = run.where.sum([total, n, *(parts[k] for k in names)])
    return total / max(n, 1), {k: round(v / max(n, 1), 4) for k, v in zip(names, sums, strict=True)}


REFIT_EXAMPLES = 20_000  # training examples the heads are refitted on (a sample beyond)
CALIBRATION_TIMES = 8  # fixed times the validation users are calibrated at, a day apart
DAY_MS = 86_400_000
MIN_FIXED = 200  # fewer fixed-time examples than this (a short log): calibrate on the cuts
CROSSFIT_USERS = 2_000  # training users whose out-of-fold logits join the calibration


def fixed_time_cuts(
    evlog: EventLog, users: np.ndarray, end_ms: int, horizon_ms: int, times: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every user (with an event before it) cut at each of `times` fixed times, a day apart,
    the latest ``end - horizon`` (every horizon observable): the population a held-out
    split scores (all users at one time, whatever their state), unlike the training cuts
    (uniform over each user's own span)."""
    users = np.unique(users)
    first = evlog.ts[evlog.offsets[users]]
    us, nows = [], []
    for j in range(times):
        t = end_ms - horizon_ms - j * DAY_MS
        sel = users[first < t]
        us.append(sel)
        nows.append(np.full(len(sel), t, dtype=np.int64))
    return np.concatenate(us), np.concatenate(nows)


def _chunks(run: Run, n: int) -> list[np.ndarray]:
    """Positions 0..n-1 cut into batches of the run's batch size."""
    step = run.spec.train.batch_size
    return [np.arange(i, min(i + step, n)) for i in range(0, n, step)]


def _vectors(
    run: Run, users: np.ndarray, nows: np.ndarray, batches: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Final vectors (N, E), horizon labels (N, K, Y) and their usable mask (N, K)."""
    cpu = torch.device("cpu")
    zs, ys, oks = [], [], []
    with torch.no_grad():
        for idx in batches:
            b, kjt, lengths, age = run.inputs(users[idx], nows[idx], cpu)
            zs.append(run.model(kjt, lengths, age)[2].float().numpy())
            ys.append(b.p_horizon.numpy() > 0.5)
            oks.append(b.p_horizon_ok.numpy())
    e, k, y = run.spec.model.out_dim, run.heads.k, run.heads.y
    return (
        np.concatenate(zs) if zs else np.zeros((0, e), np.float32),
        np.concatenate(ys) if ys else np.zeros((0, k, y), bool),
        np.concatenate(oks) if oks else np.zeros((0, k), bool),
    )


def outcome_heads(
    run: Run,
    users: np.ndarray,
    nows: np.ndarray,
    batches: list[np.ndarray],
    train: tuple[np.ndarray, np.ndarray] | None = None,
    calibrate_at: str = "fixed",
    crossfit: int = 0,
) -> OutcomeHeads:
    """The vector's outcome heads, calibrated on the validation users (`propensity`): at
    `fixed_time_cuts` (``calibrate_at="fixed"``) or at their training-style cuts ("cuts");
    with `train` (users, cut times of the training examples), the heads are first refitted
    on the final vectors of up to REFIT_EXAMPLES of them (`propensity.refit`); without, the
    trained `vec_hz` heads are kept. With `crossfit` >= 2 (and refitted heads), the
    calibration also sees up to CROSSFIT_USERS training users at the same fixed times,
    scored by heads refitted without their fold (`_out_of_fold`). ``run.model`` and
    ``run.heads`` are the final, plain modules on the CPU."""
    run.model.eval()
    run.heads.eval()
    hz, scale = run.heads.vec_hz, float(run.heads.scale.detach())
    weight, bias = hz.weight.detach().numpy() * scale, hz.bias.detach().numpy()
    if train is not None and len(train[0]):
        rng = np.random.default_rng(run.spec.train.seed)
        pick = np.sort(rng.permutation(len(train[0]))[:REFIT_EXAMPLES])
        zt, yt, okt = _vectors(run, train[0][pick], train[1][pick], _chunks(run, len(pick)))
        weight, bias = refit(zt, yt, okt)
    hmax = max(int(h) for h in run.spec.objectives.horizons_ms)
    fu, fn = fixed_time_cuts(run.log, users, run.end, hmax, CALIBRATION_TIMES)
    fixed = calibrate_at == "fixed" and len(fu) >= MIN_FIXED
    if fixed:  # else the validation users' training-style cuts
        users, nows, batches = fu, fn, _chunks(run, len(fu))
    z, y, ok = _vectors(run, users, nows, batches)
    on, extra = "fixed times" if fixed else "cuts", None
    if crossfit >= 2 and train is not None and len(train[0]) and fixed:
        extra = _out_of_fold(run, train[0][pick], zt, yt, okt, hmax, crossfit)
        on += f" + {len(extra[0])} out-of-fold training examples"
    heads = calibrate(
        run.space.names, tuple(int(h) for h in run.spec.objectives.horizons_ms),
        weight, bias, z, y, ok, extra=extra,
    )  # fmt: skip
    return replace(heads, report={**heads.report, "calibrated_on": on})


def _out_of_fold(
    run: Run,
    ex_users: np.ndarray,
    zt: np.ndarray,
    yt: np.ndarray,
    okt: np.ndarray,
    hmax: int,
    folds: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross-fitted calibration data from the training users (CalibratedClassifierCV's
    scheme): the users split into `folds` at random; each fold's users, cut at the fixed
    times, scored by heads refitted (`refit`) on the other folds' examples (zt, yt, okt of
    the users `ex_users`). Returns logits (N, K, Y), labels (N, K, Y), usable (N, K).

    The heads never saw these users' examples; the encoder did (their vectors are in-sample
    for it), as it saw every user of a time split's evaluation."""
    rng = np.random.default_rng(run.spec.train.seed + 1)
    users = np.unique(ex_users)
    fold = np.empty(len(users), np.int64)
    fold[rng.permutation(len(users))] = np.arange(len(users)) % folds
    scored = np.sort(rng.permutation(users)[:CROSSFIT_USERS])
    fu, fn = fixed_time_cuts(run.log, scored, run.end, hmax, CALIBRATION_TIMES)
    z, y, ok = _vectors(run, fu, fn, _chunks(run, len(fu)))
    ex_fold, fu_fold = fold[np.searchsorted(users, ex_users)], fold[np.searchsorted(users, fu)]
    logits = np.zeros((len(fu), yt.shape[1] * yt.shape[2]), np.float64)
    done = np.zeros(len(fu), bool)
    for f in range(folds):
        rest, mine = ex_fold != f, fu_fold == f
        if not rest.any() or not mine.any():  # one user only: nothing to score it with
            continue
        w, b = refit(zt[rest], yt[rest], okt[rest])
        logits[mine] = z[mine] @ w.T.astype(np.float64) + b
        done |= mine
    return logits[done].reshape(-1, *y.shape[1:]), y[done], ok[done]
