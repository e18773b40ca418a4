"""The training loop's bookkeeping: the learning-rate schedule and the best epoch kept.

`Schedule` warms the learning rates up over the first epoch, then holds them until the
validation loss stops improving and cuts them there (training goes on from the best epoch,
more slowly), or runs one cycle when there is no validation split. `BestEpoch` keeps the
weights and optimizer state of the epoch with the lowest validation loss. `cut_times`
chooses the (user, now) examples, `plan_batches` orders them into batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from encoder.eventlog import EventLog


@dataclass
class BestEpoch:
    """The weights (full, unsharded) and optimizer state of the epoch with the lowest
    validation loss; `restore` puts them back through the run's `encoder.parallel` place."""

    loss: float
    epoch: int
    weights: dict[str, torch.Tensor]
    opt_state: dict[str, Any]

    def restore(self, where: Any, with_opt: bool) -> None:
        where.load_weights(self.weights)
        if with_opt:
            where.load_opt_state(self.opt_state)


class Schedule:
    """Learning rates: a linear warm-up over the first epoch (at most 100 steps), then either
    constant until the validation loss stops improving, where `cut` scales them by
    `lr_cut` (plateau: training goes on from the best epoch, more slowly), or
    one cycle over all planned steps (no validation split, or ``schedule="one_cycle"``)."""

    def __init__(self, opt: Any, lr_cut: float, plan: list[list[np.ndarray]], plateau: bool):
        self.opt, self.plateau, self.factor = opt, plateau, lr_cut
        self.base = [g["lr"] for g in opt.param_groups]
        self.warm = max(1, min(100, len(plan[0]) if plan else 1))
        self.step, self.scale, self.cuts = 0, 1.0, 0
        self.cycle = None
        if not plateau:
            steps = max(sum(len(p) for p in plan), 4)
            # OneCycleLR divides by zero unless its warm-up ends past its first step
            # momentum cycles only where every group has one (a fused table optimizer of a
            # sharded run, or row-wise Adagrad, has none)
            momentum = all("betas" in g or "momentum" in g for g in opt.param_groups)
            self.cycle = torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=self.base,
                total_steps=steps,
                pct_start=max(0.1, 1.5 / steps),
                cycle_momentum=momentum,
            )

    def before_step(self) -> None:
        if self.cycle is None:
            f = min(1.0, (self.step + 1) / self.warm) * self.scale
            for g, lr in zip(self.opt.param_groups, self.base, strict=True):
                g["lr"] = lr * f

    def after_step(self) -> None:
        self.step += 1
        if self.cycle is not None:
            self.cycle.step()

    def cut(self) -> None:
        self.scale *= self.factor
        self.cuts += 1


def cut_times(
    evlog: EventLog, users: np.ndarray, cuts: int, horizon_ms: int, end_ms: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(user, now) pairs: one cut at the end of the data per user, plus `cuts` uniform in
    ``(first event, end - horizon]`` (every horizon label observable) where that exists."""
    rng = np.random.default_rng(seed)
    first = evlog.ts[evlog.offsets[users]]
    lo, hi = first + 1, end_ms - horizon_ms
    us = [users]
    nows = [np.full(len(users), end_ms, dtype=np.int64)]
    ok = hi > lo
    for _ in range(cuts):
        u = users[ok]
        span = (hi - lo[ok]).astype(np.float64)
        us.append(u)
        nows.append(lo[ok] + (rng.random(len(u)) * span).astype(np.int64))
    return np.concatenate(us), np.concatenate(nows)


def plan_batches(lengths: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Example indices in batches of similar window length, batches in random order."""
    order = np.lexsort((np.arange(len(lengths)), lengths))
    chunks = [order[k : k + size] for k in range(0, len(order), size)]
    return [chunks[k] for k in rng.permutation(len(chunks))]
