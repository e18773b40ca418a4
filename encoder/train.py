"""Training: events in, a trained `UserEncoder` (plus tokenizer config and metrics) out.

Each user's history is cut at a few times ``now``; the window is the last events before the
cut and the targets come from the events after it (see `encoder/objectives.py`). Cuts are
drawn uniformly in time (so some windows end in a long silence, as at encode time for a
fading user) and one cut sits at the end of the data. Batches are bucketed by length.
Deterministic under `TrainConfig.seed` on a given machine and thread count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from contract.events import Event
from encoder.model import ModelConfig, UserEncoder, make_kjt
from encoder.objectives import Example, ObjectiveConfig, TrainingHeads, collate, make_example
from encoder.tokenizer import TokenBatch, Tokenizer, TokenizerConfig, build_vocab

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    table_lr_mult: float = 5.0  # embedding rows see few updates each: a larger step
    weight_decay: float = 0.01
    cuts_per_user: int = 2  # time-uniform cuts, plus one at the end of the data
    train_max_events: int = 64  # windows in training (the model serves up to max_events)
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class TrainSpec:
    """Everything that defines a training run (saved with the version)."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def group_by_user(events: Sequence[Event]) -> dict[str, list[Event]]:
    """Events per user in window order (sorted by ts, event id), duplicates by id dropped."""
    out: dict[str, dict[str, Event]] = {}
    for e in events:
        out.setdefault(e.user_id, {})[e.event_id] = e
    return {u: sorted(d.values(), key=Event.sort_key) for u, d in sorted(out.items())}


def build_examples(
    users: dict[str, list[Event]],
    tok: Tokenizer,
    obj: ObjectiveConfig,
    cuts_per_user: int,
    max_events: int,
    data_end_ms: int,
    rng: np.random.Generator,
) -> list[Example]:
    """Cut every user's history into (window, targets) examples."""
    examples: list[Example] = []
    horizon = max(obj.horizons_ms)
    for evs in users.values():
        ts = np.array([e.ts_ms for e in evs], dtype=np.int64)
        nows = [data_end_ms]
        lo, hi = int(ts[0]) + 1, data_end_ms - horizon  # every horizon label observable
        if hi > lo:
            nows += [int(x) for x in rng.integers(lo, hi, size=cuts_per_user)]
        for now in nows:
            i = int(np.searchsorted(ts, now, side="right"))
            if i == 0:
                continue
            j = int(np.searchsorted(ts, now + horizon, side="right"))
            j = max(j, min(i + 1, len(evs)))
            window = evs[max(0, i - max_events) : i]
            examples.append(make_example(tok, obj, window, evs[i:j], now, data_end_ms))
    return examples


def _batches(examples: list[Example], size: int, rng: np.random.Generator) -> list[list[int]]:
    order = sorted(range(len(examples)), key=lambda k: (examples[k].ids.shape[1], k))
    chunks = [order[k : k + size] for k in range(0, len(order), size)]
    return [chunks[k] for k in rng.permutation(len(chunks))]


def train(
    events: Sequence[Event], spec: TrainSpec, data_end_ms: int | None = None
) -> tuple[UserEncoder, TokenizerConfig, dict[str, Any]]:
    """Train a model on `events`. Returns the model (eval mode), its tokenizer config, metrics.

    Args:
        events: any order; grouped per user here.
        spec: configs; ``spec.tokenizer.event_types`` empty means "build the vocabulary".
        data_end_ms: the end of the data (default: the newest event).
    """
    tc = spec.train
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    tok_cfg = spec.tokenizer
    if not tok_cfg.event_types:
        tok_cfg = replace(tok_cfg, event_types=build_vocab(events))
    tok = Tokenizer(tok_cfg)
    users = group_by_user(events)
    end = data_end_ms if data_end_ms is not None else max(e.ts_ms for e in events)
    t0 = time.perf_counter()
    examples = build_examples(
        users, tok, spec.objectives, tc.cuts_per_user, tc.train_max_events, end, rng
    )
    log.info(
        "built %d examples from %d users in %.1fs",
        len(examples),
        len(users),
        time.perf_counter() - t0,
    )
    model = UserEncoder(tok_cfg, spec.model)
    heads = TrainingHeads(tok_cfg, spec.objectives, spec.model.d_model, spec.model.out_dim)
    params = list(model.parameters()) + list(heads.parameters())
    tables = list(model.ec.parameters()) + list(heads.item_out.parameters())
    ids = {id(p) for p in tables}
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if id(p) not in ids], "lr": tc.lr},
        {"params": tables, "lr": tc.lr * tc.table_lr_mult, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    plan = [_batches(examples, tc.batch_size, rng) for _ in range(tc.epochs)]
    total_steps = sum(len(p) for p in plan)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=max(total_steps, 1), pct_start=0.1
    )
    from tqdm import tqdm

    bar = tqdm(total=total_steps, disable=not tc.progress, desc="train", unit="step")
    history: list[float] = []
    parts: dict[str, float] = {}
    model.train()
    heads.train()
    t0 = time.perf_counter()
    for epoch in range(tc.epochs):
        for idx in plan[epoch]:
            b = collate([examples[k] for k in idx])
            tb = TokenBatch(ids=b["ids"], lengths=b["lengths"], age_h=b["age_h"])  # type: ignore[arg-type]
            lengths = torch.from_numpy(tb.lengths)
            kjt = make_kjt(tb, model.keys, torch.device("cpu"))
            h, pad, z = model(kjt, lengths, torch.from_numpy(tb.age_h))
            z_prefix = model.prefix_vectors(h, pad) if spec.objectives.w_prefix > 0 else None
            loss, parts = heads.loss(h, pad, z, b, gen, z_prefix)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            history.append(float(loss.detach()))
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(history[-20:]):.3f}")
            bar.update(1)
    bar.close()
    model.eval()
    metrics: dict[str, Any] = {
        "users": len(users),
        "events": len(events),
        "examples": len(examples),
        "steps": total_steps,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "loss_first": round(float(np.mean(history[:20])), 4) if history else None,
        "loss_last": round(float(np.mean(history[-20:])), 4) if history else None,
        "loss_parts_last": {k: round(v, 4) for k, v in parts.items()},
        "data_end_ms": end,
        "seed": tc.seed,
    }
    return model, tok_cfg, metrics
