"""Self-supervised objectives for any schema, from event data alone.

From every position t of a window (the hidden state h_t, causal), from the user vector of
every prefix, and from the user vector z at the encode time ``now``:

- next event type (softmax over the type vocabulary);
- next value of each high-cardinality categorical property (`value_targets`: sampled
  softmax, the batch's positives plus uniform negatives);
- multi-horizon: which outcomes (`encoder/outcomes.py`: any event, event types, top values
  of the categorical properties) occur within each horizon (multi-label). A horizon label is
  only used when its whole horizon lies inside the data (``anchor + H <= data_end``), so the
  end of a dump is not read as "nothing happened";
- from z only: the bag of the window's values of each value target (sampled softmax).

Example: window ``[view(sku=a7) @ 0 s, cart(sku=a7) @ 40 s]``, next event
``buy(sku=a7) @ 2 h`` and nothing after: position 0 targets ``type=cart, sku=a7,
1 h={(any), type=cart, sku=a7}, 1 d={(any), type=cart, type=buy, sku=a7}``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoder.eventlog import EventLog
from encoder.features import FeatureSpec
from encoder.outcomes import OutcomeSpace, occurred
from encoder.tokenizer import DAY, HOUR, WEEK, TokenBatch, Tokenizer

IGNORE = -100


@dataclass(frozen=True)
class ObjectiveConfig:
    horizons_ms: tuple[int, ...] = (HOUR, DAY, 3 * DAY, WEEK, 2 * WEEK)  # 2 w: churn horizon
    w_next_type: float = 1.0
    w_next_value: float = 1.0
    w_horizon: float = 1.0
    w_pooled: float = 2.0  # the user vector's own copy of the three objectives
    w_vec_horizon: float = 4.0  # extra weight on the user vector's multi-horizon targets
    w_prefix: float = 1.0  # the user vector of every prefix predicts that position's targets
    w_bag: float = 2.0  # the user vector also names values of its window (sampled softmax)
    bag_size: int = 16
    negatives: int = 512
    top_types: int = 32  # outcomes: this many event types ...
    top_values: int = 16  # ... and this many top values of each categorical property
    max_value_targets: int = 4  # next-value targets: the most common properties with ...
    min_target_distinct: int = 32  # ... at least this many distinct values
    vocab_targets_only: bool = False  # next-value / bag targets only among vocabulary values
    # multi-horizon targets of positions t (the hidden states, the prefix vectors) count the
    # events after t's time, and only a position that is the last of the events sharing its
    # timestamp has them: a window at a time holds every event up to it, never part of an
    # order whose lines share one timestamp (the horizon would then be the order's rest)
    whole_times: bool = True
    # > 0: the vector's multi-horizon targets (at now and at every prefix) also through a
    # second head whose logits add a linear function of the window's outcome counts
    # (`ModelConfig.count_top`; none: no residual): the vector learns what the counts do
    # not say, weighed w_vec_horizon times this. Seeds 0-2, both - aggregates: MovieLens
    # +0.033 (+0.003 without), Instacart +0.004 (+0.002); README, docs/benchmarks.md
    w_residual: float = 3.0


def value_targets(spec: FeatureSpec, obj: ObjectiveConfig) -> tuple[int, ...]:
    """Categorical indices whose next value is predicted (high-cardinality properties)."""
    picked = [
        i
        for i, c in enumerate(spec.categorical)
        if c.kind == "categorical" and len(c.vocab) + c.buckets >= obj.min_target_distinct
    ]
    return tuple(picked[: obj.max_value_targets])


@dataclass
class Batch:
    """A training batch: jagged inputs and padded targets. B windows, T = longest, K
    horizons, Y outcomes, P value targets.

    Attributes:
        tokens: the windows.
        next_type: (B, T); next_value: (P, B, T) (IGNORE where unknown).
        horizon: (B, T, K, Y) float labels; horizon_ok: (B, T, K).
        p_type: (B,); p_value: (P, B); p_horizon: (B, K, Y); p_horizon_ok: (B, K).
        p_bag: (P, B, bag_size) window values (IGNORE-padded).
    """

    tokens: TokenBatch
    next_type: torch.Tensor
    next_value: torch.Tensor
    horizon: torch.Tensor
    horizon_ok: torch.Tensor
    p_type: torch.Tensor
    p_value: torch.Tensor
    p_horizon: torch.Tensor
    p_horizon_ok: torch.Tensor
    p_bag: torch.Tensor


def batch_to(b: Batch, device: torch.device) -> Batch:
    """The batch's target tensors on `device` (the tokens stay numpy: `make_kjt` moves them)."""
    if device.type == "cpu":
        return b
    moved = {
        f.name: getattr(b, f.name).to(device)
        for f in fields(b)
        if isinstance(getattr(b, f.name), torch.Tensor)
    }
    return replace(b, **moved)


def make_batch(
    log: EventLog,
    tok: Tokenizer,
    space: OutcomeSpace,
    obj: ObjectiveConfig,
    users: np.ndarray,
    nows: np.ndarray,
    max_events: int,
    data_end_ms: int,
    window_ms: int | None = None,
) -> Batch:
    """Windows of `users` at `nows` (events at or before now, at most `max_events`, none
    older than `window_ms`) and their targets from the events after them."""
    spec = tok.config.features
    targets = value_targets(spec, obj)
    cols = [1 + c for c in targets]
    # the highest id a value target may take: beyond the vocabulary are shared rare buckets
    limit = [
        len(spec.categorical[c].vocab) if obj.vocab_targets_only else spec.categorical[c].rows
        for c in targets
    ]
    lo, hi = log.window_bounds(users, nows, max_events, horizon_ms=window_ms)
    tokens = log.token_batch(lo, hi, nows, tok)
    b, p = len(users), len(cols)
    t = max(1, int((hi - lo).max()) if b else 1)
    hs = np.asarray(obj.horizons_ms, dtype=np.int64)
    k, y = len(hs), space.size
    nt = np.full((b, t), IGNORE, dtype=np.int64)
    nv = np.full((p, b, t), IGNORE, dtype=np.int64)
    hz = np.zeros((b, t, k, y), dtype=np.float32)
    hok = np.zeros((b, t, k), dtype=bool)
    p_type = np.full(b, IGNORE, dtype=np.int64)
    p_value = np.full((p, b), IGNORE, dtype=np.int64)
    p_hz = np.zeros((b, k, y), dtype=np.float32)
    p_bag = np.full((p, b, obj.bag_size), IGNORE, dtype=np.int64)
    ends = log.offsets[users + 1]
    horizon_end = log.positions(users, nows + hs.max(), strict=False)
    for i in range(b):
        w0, w1, end = int(lo[i]), int(hi[i]), int(ends[i])
        n = w1 - w0
        j = max(int(horizon_end[i]), min(w1 + 1, end))
        seq_ts = log.ts[w0:j]
        labels = space.labels(log.static[w0:j])  # (S, C)
        nxt = np.arange(w0 + 1, w1 + 1)  # (n,) rows of the next events
        has = nxt < end
        safe = np.minimum(nxt, end - 1)
        nt[i, :n] = np.where(has, log.static[safe, 0], IGNORE)
        for q, col in enumerate(cols):
            v = np.where(has, log.static[safe, col], 0)
            nv[q, i, :n] = np.where((v > 0) & (v <= limit[q]), v, IGNORE)
        # positions: events after position t's time, up to t's time + H
        stop = np.searchsorted(seq_ts, seq_ts[:n, None] + hs[None, :], side="right")  # (n, K)
        after = np.searchsorted(seq_ts, seq_ts[:n], side="right")  # (n,) first later row
        hz[i, :n] = occurred(labels, np.repeat(after, k), stop.reshape(-1), y).reshape(n, k, y)
        hok[i, :n] = seq_ts[:n, None] + hs[None, :] <= data_end_ms
        if obj.whole_times:  # only a position that ends its time's events is a window
            hok[i, :n] &= (after == np.arange(1, n + 1))[:, None]
        # the user vector at now: events after now, up to now + H
        now = int(nows[i])
        p_stop = np.searchsorted(seq_ts, now + hs, side="right")  # (K,)
        p_hz[i] = occurred(labels, np.full(k, n), p_stop, y)
        if w1 < end:
            p_type[i] = log.static[w1, 0]
            for q, col in enumerate(cols):
                val = int(log.static[w1, col])
                p_value[q, i] = val if 0 < val <= limit[q] else IGNORE
        for q, col in enumerate(cols):
            seen = np.unique(log.static[w0:w1, col])
            seen = seen[(seen > 0) & (seen <= limit[q])]
            if len(seen) > obj.bag_size:  # a deterministic spread over the window's values
                seen = seen[np.linspace(0, len(seen) - 1, obj.bag_size).astype(np.int64)]
            p_bag[q, i, : len(seen)] = seen
    return Batch(
        tokens=tokens,
        next_type=torch.from_numpy(nt),
        next_value=torch.from_numpy(nv),
        horizon=torch.from_numpy(hz),
        horizon_ok=torch.from_numpy(hok),
        p_type=torch.from_numpy(p_type),
        p_value=torch.from_numpy(p_value),
        p_horizon=torch.from_numpy(p_hz),
        p_horizon_ok=torch.from_numpy(nows[:, None] + hs[None, :] <= data_end_ms),
        p_bag=torch.from_numpy(p_bag),
    )


class TrainingHeads(nn.Module):
    """Prediction heads used only in training; not saved with the serving model."""

    def __init__(
        self,
        tok: Tokenizer,
        space: OutcomeSpace,
        obj: ObjectiveConfig,
        d_model: int,
        out_dim: int,
        normalized: bool = False,
        n_counts: int = 0,
        count_dims: int = 0,
    ) -> None:
        super().__init__()
        self.obj = obj
        # the vector's last count_dims components (`ModelConfig.count_dims`) answer to a
        # head of their own (the horizon targets at the window's end and, weighed
        # w_prefix, at every prefix; w_vec_horizon times that in all, not w_pooled too:
        # the weighting measured); every other head reads the rest
        self.count_dims = count_dims
        out_dim -= count_dims
        spec = tok.config.features
        n_types = len(spec.event_types) + 2
        self.k, self.y = len(obj.horizons_ms), space.size
        self.register_buffer("hz_weight", torch.from_numpy(space.weights()), persistent=False)
        self.targets = value_targets(spec, obj)
        self.value_rows = [spec.categorical[c].rows for c in self.targets]
        self.value_out = nn.ModuleList([nn.Embedding(r, d_model) for r in self.value_rows])
        for emb in self.value_out:
            nn.init.normal_(emb.weight, 0.0, 0.02)  # type: ignore[arg-type]
        self.seq_value = nn.ModuleList([nn.Linear(d_model, d_model) for _ in self.targets])
        self.vec_value = nn.ModuleList([nn.Linear(out_dim, d_model) for _ in self.targets])
        self.seq_type, self.seq_hz = (
            nn.Linear(d_model, n_types),
            nn.Linear(d_model, self.k * self.y),
        )
        self.vec_type, self.vec_hz = (
            nn.Linear(out_dim, n_types),
            nn.Linear(out_dim, self.k * self.y),
        )
        self.residual = obj.w_residual > 0 and n_counts > 0
        if self.residual:
            self.res_hz = nn.Linear(out_dim, self.k * self.y)
            self.cnt_hz = nn.Linear(n_counts, self.k * self.y)
        self.own_hz = nn.Linear(count_dims, self.k * self.y) if count_dims else None
        # temperature of the user vector (unit vectors need a large one)
        self.scale = nn.Parameter(torch.tensor(10.0 if normalized else 1.0))

    def _value_loss(
        self, q: torch.Tensor, target: torch.Tensor, p: int, gen: torch.Generator
    ) -> torch.Tensor:
        """Sampled softmax. q: (M, D) queries, target: (M,) ids of target p (IGNORE skipped)."""
        keep = target != IGNORE
        if not bool(keep.any()):
            return q.sum() * 0.0
        q, target = q[keep], target[keep]  # (M', D), (M',)
        neg = torch.randint(1, self.value_rows[p], (self.obj.negatives,), generator=gen)
        neg = neg.to(target.device)  # the generator is a CPU one wherever the model runs
        cand, inv = torch.unique(torch.cat([target, neg]), return_inverse=True)  # (C,)
        logits = q @ self.value_out[p](cand).T  # (M', C)
        return F.cross_entropy(logits, inv[: target.shape[0]])

    def _values(
        self, q_of: nn.ModuleList, x: torch.Tensor, target: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Mean sampled-softmax loss over the value targets. x: (M, D_in), target: (P, M)."""
        if not self.targets:
            return x.sum() * 0.0
        parts = [self._value_loss(q_of[p](x), target[p], p, gen) for p in range(len(self.targets))]
        return torch.stack(parts).mean()

    def _horizon(self, logit: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """Group-weighted BCE. logit, labels: (..., K, Y); ok: (..., K) usable labels."""
        bce = F.binary_cross_entropy_with_logits(logit, labels, reduction="none")  # (..., K, Y)
        weight: torch.Tensor = self.hz_weight  # type: ignore[assignment]
        per = (bce * weight).sum(-1)  # (..., K)
        okf = ok.float()
        return (per * okf).sum() / okf.sum().clamp(min=1.0)

    def loss(
        self,
        h: torch.Tensor,
        pad: torch.Tensor,
        z: torch.Tensor,
        batch: Batch,
        gen: torch.Generator,
        z_prefix: torch.Tensor | None = None,
        counts: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """h: (B, T, D) hidden states, pad: (B, T), z: (B, E) user vectors at ``now``,
        z_prefix: (B, T, E) the user vector of every prefix (type and horizon targets)."""
        o = self.obj
        b, t, _ = h.shape
        real = ~pad  # (B, T)
        own = own_pre = None
        if self.own_hz is not None:
            cut = z.shape[-1] - self.count_dims
            z, own = z[..., :cut], z[..., cut:]
            if z_prefix is not None:
                z_prefix, own_pre = z_prefix[..., :cut], z_prefix[..., cut:]
        flat_h = h.reshape(b * t, -1)
        l_type = F.cross_entropy(
            self.seq_type(flat_h), batch.next_type.reshape(-1), ignore_index=IGNORE
        )
        l_value = self._values(self.seq_value, flat_h, batch.next_value.reshape(-1, b * t), gen)
        ok = batch.horizon_ok & real.unsqueeze(-1)  # (B, T, K)
        l_hz = self._horizon(self.seq_hz(h).reshape(b, t, self.k, self.y), batch.horizon, ok)
        zs = z * self.scale  # (B, E)
        p_type = (
            F.cross_entropy(self.vec_type(zs), batch.p_type, ignore_index=IGNORE)
            if bool((batch.p_type != IGNORE).any())
            else z.sum() * 0.0
        )
        p_value = self._values(self.vec_value, zs, batch.p_value, gen)
        p_hz = self._horizon(
            self.vec_hz(zs).reshape(b, self.k, self.y), batch.p_horizon, batch.p_horizon_ok
        )
        nb = batch.p_bag.shape[-1]
        zb = zs.unsqueeze(1).expand(-1, nb, -1).reshape(b * nb, -1)
        p_bag = self._values(
            self.vec_value, zb, batch.p_bag.reshape(len(self.targets), b * nb), gen
        )
        seq = o.w_next_type * l_type + o.w_next_value * l_value + o.w_horizon * l_hz
        vec = o.w_next_type * p_type + o.w_next_value * p_value + o.w_vec_horizon * p_hz
        total = seq + o.w_pooled * vec + o.w_bag * p_bag
        pre = z.sum() * 0.0
        zp = z_prefix * self.scale if z_prefix is not None and o.w_prefix > 0 else None
        if zp is not None:  # (B, T, E)
            pre_type = F.cross_entropy(
                self.vec_type(zp).reshape(b * t, -1),
                batch.next_type.reshape(-1),
                ignore_index=IGNORE,
            )
            zp_hz = self.vec_hz(zp).reshape(b, t, self.k, self.y)  # (B, T, K, Y)
            pre = pre_type + o.w_vec_horizon * self._horizon(zp_hz, batch.horizon, ok)
            total = total + o.w_prefix * pre
        res = z.sum() * 0.0
        if self.residual and counts is not None:
            c_now, c_pre = counts  # (B, C), (B, T, C)

            def logits(zz: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
                return self.res_hz(zz) + self.cnt_hz(c.float())

            res = self._horizon(
                logits(zs, c_now).reshape(b, self.k, self.y), batch.p_horizon, batch.p_horizon_ok
            )
            if zp is not None and c_pre is not None:
                zp_res = logits(zp, c_pre).reshape(b, t, self.k, self.y)
                res = res + o.w_prefix * self._horizon(zp_res, batch.horizon, ok)
            total = total + o.w_residual * o.w_vec_horizon * res
        l_own = z.sum() * 0.0
        if self.own_hz is not None and own is not None:
            l_own = self._horizon(
                self.own_hz(own).reshape(b, self.k, self.y), batch.p_horizon, batch.p_horizon_ok
            )
            if own_pre is not None and o.w_prefix > 0:
                own_pre_hz = self.own_hz(own_pre).reshape(b, t, self.k, self.y)
                l_own = l_own + o.w_prefix * self._horizon(own_pre_hz, batch.horizon, ok)
            total = total + o.w_vec_horizon * l_own
        named = {
            "type": l_type,
            "value": l_value,
            "horizon": l_hz,
            "vec_type": p_type,
            "vec_value": p_value,
            "vec_horizon": p_hz,
            "bag": p_bag,
            "prefix": pre,
            "residual": res,
            "own_counts": l_own,
        }
        return total, {k: float(v.detach()) for k, v in named.items()}
