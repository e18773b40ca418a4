"""Self-supervised objectives, from event data alone.

From every position t of a window (the hidden state h_t, causal) and, separately, from the
user vector z at the encode time ``now``:

- next event type (softmax over the type vocabulary);
- next event's hashed item (sampled softmax: the batch's positives plus uniform negatives);
- multi-horizon: which event types occur within the next hour, day and week (multi-label).
  A horizon label is only used when its whole horizon lies inside the data (``anchor + H <=
  data_end``), so the end of a dump is not read as "nothing happened".

Example: window ``[view i7 @ 0 s, cart i7 @ 40 s]``, next event ``purchase i7 @ 2 h`` and
nothing after: position 0 targets ``type=cart, item=i7, 1 h={cart}, 1 d={cart, purchase}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contract.events import Event
from encoder.tokenizer import DAY, HOUR, WEEK, Tokenizer, TokenizerConfig

IGNORE = -100


@dataclass(frozen=True)
class ObjectiveConfig:
    horizons_ms: tuple[int, ...] = (HOUR, DAY, 3 * DAY, WEEK, 2 * WEEK)  # 2 w: churn horizon
    w_next_type: float = 1.0
    w_next_item: float = 1.0
    w_horizon: float = 1.0
    w_pooled: float = 2.0  # the user vector's own copy of the three objectives
    w_vec_horizon: float = 4.0  # extra weight on the user vector's multi-horizon targets
    w_prefix: float = 1.0  # the user vector of every prefix predicts that position's targets
    w_bag: float = 2.0  # the user vector also names items of its window (sampled softmax)
    bag_size: int = 16
    item_field: str = "item"
    item_negatives: int = 512


@dataclass
class Example:
    """One training window and its targets. L = window length, K = horizons, Y = type rows.

    Attributes:
        ids: (F, L) token ids of the window.
        next_type, next_item: (L,) targets per position (IGNORE where unknown).
        horizon: (L, K, Y) bool labels; horizon_ok: (L, K) whether each label is usable.
        p_type, p_item: targets of the user vector (the first event after ``now``).
        p_horizon: (K, Y), p_horizon_ok: (K,).
        p_bag: (bag_size,) item ids drawn from the window (IGNORE-padded).
    """

    ids: np.ndarray
    next_type: np.ndarray
    next_item: np.ndarray
    horizon: np.ndarray
    horizon_ok: np.ndarray
    p_type: int
    p_item: int
    p_horizon: np.ndarray
    p_horizon_ok: np.ndarray
    p_bag: np.ndarray
    age_h: np.ndarray  # (L,) exact ages, see `TokenBatch`


def make_example(
    tok: Tokenizer,
    obj: ObjectiveConfig,
    window: Sequence[Event],
    after: Sequence[Event],
    now_ms: int,
    data_end_ms: int,
) -> Example:
    """Targets for `window` (events up to ``now``) given the events `after` it (oldest first)."""
    cfg: TokenizerConfig = tok.config
    item_col = 1 + [n for n, _ in cfg.categorical].index(obj.item_field)
    batch = tok.encode([window], now_ms)
    seq = list(window) + list(after)
    rows = np.array([tok.event_ids(e) for e in seq], dtype=np.int64).reshape(len(seq), -1)
    types, items = rows[:, 0], rows[:, item_col]  # (S,)
    ts = np.array([e.ts_ms for e in seq], dtype=np.int64)  # (S,)
    n_types = len(cfg.event_types) + 2
    length = len(window)
    nxt = np.arange(1, length + 1)  # (L,)
    has = nxt < len(seq)
    next_type = np.where(has, types[np.minimum(nxt, len(seq) - 1)], IGNORE)
    next_item = np.where(has, items[np.minimum(nxt, len(seq) - 1)], 0)
    next_item = np.where(next_item > 0, next_item, IGNORE)
    counts = np.zeros((len(seq) + 1, n_types), dtype=np.int32)
    counts[1:] = np.cumsum(np.eye(n_types, dtype=np.int32)[types], axis=0)  # (S+1, Y)
    hs = np.array(obj.horizons_ms, dtype=np.int64)  # (K,)
    ends = np.searchsorted(ts, ts[:length, None] + hs[None, :], side="right")  # (L, K)
    horizon = (counts[ends] - counts[nxt][:, None, :]) > 0  # (L, K, Y)
    horizon_ok = ts[:length, None] + hs[None, :] <= data_end_ms  # (L, K)
    p_ends = np.searchsorted(ts, now_ms + hs, side="right")  # (K,)
    p_horizon = (counts[p_ends] - counts[length][None, :]) > 0  # (K, Y)
    seen = np.unique(items[:length][items[:length] > 0])
    if len(seen) > obj.bag_size:  # a deterministic spread over the window's distinct items
        seen = seen[np.linspace(0, len(seen) - 1, obj.bag_size).astype(np.int64)]
    p_bag = np.full(obj.bag_size, IGNORE, dtype=np.int64)
    p_bag[: len(seen)] = seen
    return Example(
        ids=batch.ids,
        next_type=next_type,
        next_item=next_item,
        horizon=horizon,
        horizon_ok=horizon_ok,
        p_type=int(types[length]) if length < len(seq) else IGNORE,
        p_item=int(items[length]) if length < len(seq) and items[length] > 0 else IGNORE,
        p_horizon=p_horizon,
        p_horizon_ok=now_ms + hs <= data_end_ms,
        p_bag=p_bag,
        age_h=batch.age_h,
    )


def collate(examples: Sequence[Example]) -> dict[str, torch.Tensor | np.ndarray]:
    """Stack examples: jagged ids (F, N) plus padded targets (B, T, ...)."""
    b = len(examples)
    t = max(1, max(e.ids.shape[1] for e in examples))
    k, y = examples[0].p_horizon.shape
    nt = np.full((b, t), IGNORE, dtype=np.int64)
    ni = np.full((b, t), IGNORE, dtype=np.int64)
    hz = np.zeros((b, t, k, y), dtype=np.float32)
    hok = np.zeros((b, t, k), dtype=bool)
    for i, e in enumerate(examples):
        n = e.ids.shape[1]
        nt[i, :n], ni[i, :n], hz[i, :n], hok[i, :n] = (
            e.next_type,
            e.next_item,
            e.horizon,
            e.horizon_ok,
        )
    return {
        "ids": np.concatenate([e.ids for e in examples], axis=1),
        "age_h": np.concatenate([e.age_h for e in examples]),
        "lengths": np.array([e.ids.shape[1] for e in examples], dtype=np.int64),
        "next_type": torch.from_numpy(nt),
        "next_item": torch.from_numpy(ni),
        "horizon": torch.from_numpy(hz),
        "horizon_ok": torch.from_numpy(hok),
        "p_type": torch.tensor([e.p_type for e in examples]),
        "p_item": torch.tensor([e.p_item for e in examples]),
        "p_horizon": torch.from_numpy(np.stack([e.p_horizon for e in examples]).astype(np.float32)),
        "p_horizon_ok": torch.from_numpy(np.stack([e.p_horizon_ok for e in examples])),
        "p_bag": torch.from_numpy(np.stack([e.p_bag for e in examples])),
    }


class TrainingHeads(nn.Module):
    """Prediction heads used only in training; not saved with the serving model."""

    def __init__(self, tok: TokenizerConfig, obj: ObjectiveConfig, d_model: int, out_dim: int):
        super().__init__()
        self.obj = obj
        y = len(tok.event_types) + 2
        k = len(obj.horizons_ms)
        self.k, self.y = k, y
        self.item_rows = dict(tok.categorical)[obj.item_field] + 1
        self.item_out = nn.Embedding(self.item_rows, d_model)
        nn.init.normal_(self.item_out.weight, 0.0, 0.02)
        self.seq_type, self.seq_hz = nn.Linear(d_model, y), nn.Linear(d_model, k * y)
        self.seq_item = nn.Linear(d_model, d_model)
        self.vec_type, self.vec_hz = nn.Linear(out_dim, y), nn.Linear(out_dim, k * y)
        self.vec_item = nn.Linear(out_dim, d_model)
        self.scale = nn.Parameter(torch.tensor(10.0))  # temperature of the unit user vector

    def _item_loss(
        self, q: torch.Tensor, target: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Sampled softmax. q: (M, D) queries, target: (M,) bucket ids (IGNORE skipped)."""
        keep = target != IGNORE
        if not bool(keep.any()):
            return q.sum() * 0.0
        q, target = q[keep], target[keep]  # (M', D), (M',)
        neg = torch.randint(1, self.item_rows, (self.obj.item_negatives,), generator=gen)
        cand, inv = torch.unique(torch.cat([target, neg]), return_inverse=True)  # (C,)
        logits = q @ self.item_out(cand).T  # (M', C)
        return F.cross_entropy(logits, inv[: target.shape[0]])

    def loss(
        self,
        h: torch.Tensor,
        pad: torch.Tensor,
        z: torch.Tensor,
        batch: dict,
        gen: torch.Generator,
        z_prefix: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """h: (B, T, D) hidden states, pad: (B, T), z: (B, E) user vectors at ``now``,
        z_prefix: (B, T, E) the user vector of every prefix (type and horizon targets)."""
        o = self.obj
        b, t, _ = h.shape
        real = ~pad  # (B, T)
        l_type = F.cross_entropy(
            self.seq_type(h).reshape(b * t, -1), batch["next_type"].reshape(-1), ignore_index=IGNORE
        )
        l_item = self._item_loss(
            self.seq_item(h).reshape(b * t, -1), batch["next_item"].reshape(-1), gen
        )
        hz_logit = self.seq_hz(h).reshape(b, t, self.k, self.y)  # (B, T, K, Y)
        ok = (batch["horizon_ok"] & real.unsqueeze(-1)).unsqueeze(-1).float()  # (B, T, K, 1)
        bce = F.binary_cross_entropy_with_logits(hz_logit, batch["horizon"], reduction="none")
        l_hz = (bce * ok).sum() / (ok.sum() * self.y).clamp(min=1.0)
        zs = z * self.scale  # (B, E)
        p_type = (
            F.cross_entropy(self.vec_type(zs), batch["p_type"], ignore_index=IGNORE)
            if bool((batch["p_type"] != IGNORE).any())
            else z.sum() * 0.0
        )
        p_item = self._item_loss(self.vec_item(zs), batch["p_item"], gen)
        p_logit = self.vec_hz(zs).reshape(b, self.k, self.y)  # (B, K, Y)
        p_ok = batch["p_horizon_ok"].unsqueeze(-1).float()  # (B, K, 1)
        p_bce = F.binary_cross_entropy_with_logits(p_logit, batch["p_horizon"], reduction="none")
        p_hz = (p_bce * p_ok).sum() / (p_ok.sum() * self.y).clamp(min=1.0)
        q = self.vec_item(zs)  # (B, D)
        nb = batch["p_bag"].shape[1]
        p_bag = self._item_loss(
            q.unsqueeze(1).expand(-1, nb, -1).reshape(b * nb, -1), batch["p_bag"].reshape(-1), gen
        )
        seq = o.w_next_type * l_type + o.w_next_item * l_item + o.w_horizon * l_hz
        vec = o.w_next_type * p_type + o.w_next_item * p_item + o.w_vec_horizon * p_hz
        total = seq + o.w_pooled * vec + o.w_bag * p_bag
        pre = z.sum() * 0.0
        if z_prefix is not None and o.w_prefix > 0:
            zp = z_prefix * self.scale  # (B, T, E)
            pre_type = F.cross_entropy(
                self.vec_type(zp).reshape(b * t, -1),
                batch["next_type"].reshape(-1),
                ignore_index=IGNORE,
            )
            zp_hz = self.vec_hz(zp).reshape(b, t, self.k, self.y)  # (B, T, K, Y)
            zb = F.binary_cross_entropy_with_logits(zp_hz, batch["horizon"], reduction="none")
            pre = pre_type + o.w_vec_horizon * (zb * ok).sum() / (ok.sum() * self.y).clamp(min=1.0)
            total = total + o.w_prefix * pre
        named = {
            "type": l_type,
            "item": l_item,
            "horizon": l_hz,
            "vec_type": p_type,
            "vec_item": p_item,
            "vec_horizon": p_hz,
            "bag": p_bag,
            "prefix": pre,
        }
        parts = {k: float(v.detach()) for k, v in named.items()}
        return total, parts
