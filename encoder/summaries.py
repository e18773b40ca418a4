"""What the user vector reads from a window (encoder/model.py draws the whole model): the
attention pooling, sum and newest of the Transformer's states, the bags of the events' own
embeddings (`Bags`), recency and recent event counts, and with `ModelConfig.count_top` the
log counts of the top types and values (`encoder/counts.py`), projected to the vector.

`Summaries` is the part of `UserEncoder` after its layers: `summarise` (the vector of each
window) and `prefix_vectors` (training: the vector of every prefix of each window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from encoder.counts import OutcomeCounts
from encoder.model_config import ModelConfig

COUNT_SPANS_H = (24.0, 168.0, 720.0)  # the vector reads event counts of the last 1 d, 1 w, 30 d
MAX_DECAY = 600.0  # exp(600) fits a float64: older events weigh exp(-600), i.e. nothing


@dataclass
class Bags:
    """What the window's bags are made of: raw (B, T, D) each event's embeddings apart from
    its age (type, properties, gap), zero at padding; hours (B, T) float64 its age at
    ``now``. The user vector reads the plain sum of raw (counts of what the window holds)
    and sums decayed by age at each time scale of `ModelConfig.decays_h` (recent counts)."""

    raw: torch.Tensor
    hours: torch.Tensor
    counted: torch.Tensor | None = None  # (B, T, Y) `OutcomeCounts.indicators`, padded
    manner: torch.Tensor | None = None  # (B, T, D) the other embeddings (`manner_bag`), padded

    def weight(self, tau_h: float, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B, T, 1) ``exp(-hours / tau)``."""
        w = torch.exp(-self.hours.clamp(max=MAX_DECAY * tau_h) / tau_h).unsqueeze(-1)
        return w.to(dtype or self.raw.dtype)


class Summaries:
    """Mixed into `UserEncoder`, whose modules it reads: `pool` (attention pooling scores),
    `proj` (the summaries to the vector) and `counts` (`count_top`), sized by `cfg`."""

    cfg: ModelConfig
    pool: nn.Linear
    proj: nn.Linear
    counts: OutcomeCounts | None
    count_proj: nn.Linear | None

    @property
    def vector_reads_counts(self) -> bool:
        """Whether the vector reads the window's outcome counts: as summaries
        (`counts_in_vector`) and / or as its last `count_dims` components."""
        return self.counts is not None and (
            self.cfg.counts_in_vector or self.count_proj is not None
        )

    def summarise(
        self, h: torch.Tensor, pad: torch.Tensor, lengths: torch.Tensor, bags: Bags
    ) -> torch.Tensor:
        """Hidden states (B, T, D), the pad mask and the bags -> the user vectors (B, E)."""
        score = self.pool(h).squeeze(-1).float().masked_fill(pad, float("-inf"))  # (B, T)
        w = torch.softmax(score, dim=1).nan_to_num(0.0)  # empty windows pool to zero
        pooled = torch.einsum("bt,btd->bd", w.to(h.dtype), h)  # (B, D)
        realf = (~pad).unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        hsum = (h * realf).sum(1) / self.cfg.max_events  # (B, D)
        last = (lengths - 1).clamp(min=0)  # (B,) the newest event saw the whole window
        newest = h[torch.arange(h.shape[0], device=h.device), last]  # (B, D)
        newest = newest * (lengths > 0).unsqueeze(-1).to(h.dtype)
        decayed = [(bags.raw * bags.weight(tau)).sum(1) for tau in self.cfg.decays_h]
        real = ~pad
        recency = bags.hours.gather(1, last.unsqueeze(1)).squeeze(1)  # (B,)
        recent = [((bags.hours <= w) & real).sum(1) for w in COUNT_SPANS_H]  # (B,) each
        dense = self._dense(recency, torch.stack([lengths.to(recent[0].dtype), *recent], -1))
        parts = [pooled, hsum, newest, bags.raw.sum(1), *decayed, dense]
        if bags.manner is not None:
            n = lengths.clamp(min=1).unsqueeze(-1).to(h.dtype)  # (B, 1)
            parts.insert(4, bags.manner.sum(1) / n)
        counted = None
        if bags.counted is not None and self.vector_reads_counts:
            counted = self.count_features(pad, bags).to(h.dtype)
        return self._out(parts, counted)

    def count_features(self, pad: torch.Tensor, bags: Bags) -> torch.Tensor:
        """(B, out_size) the window's outcome counts (`count_top`)."""
        assert bags.counted is not None
        real = ~pad
        masks = [real] + [(bags.hours <= w) & real for w in COUNT_SPANS_H]
        return self._counts().window(bags.counted, masks)

    def prefix_count_features(self, bags: Bags, seen: list[torch.Tensor]) -> torch.Tensor:
        """(B, T, out_size) the outcome counts of every prefix (`seen`: `prefix_counts`)."""
        assert bags.counted is not None
        return self._counts().prefixes(bags.counted, seen)

    @staticmethod
    def prefix_counts(pad: torch.Tensor, bags: Bags) -> list[torch.Tensor]:
        """Events seen by each position t (B, T): all, then within each span of t's time."""
        t = pad.shape[1]
        before = torch.tril(torch.ones(t, t, dtype=torch.bool, device=pad.device))  # (t, i)
        seen = before.unsqueeze(0) & (~pad).unsqueeze(1)  # (B, t, i)
        age = bags.hours.unsqueeze(1) - bags.hours.unsqueeze(2)  # (B, t, i)
        return [seen.sum(-1)] + [(seen & (age <= w)).sum(-1) for w in COUNT_SPANS_H]

    def prefix_vectors(
        self,
        h: torch.Tensor,
        pad: torch.Tensor,
        bags: Bags,
        seen: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The user vector of every prefix (training only): z_t as if the window ended at t.

        Attention pooling and the bags as running sums, so z at the newest position equals
        `forward`'s. A decayed bag at t weighs event i by ``exp(-(ts_t - ts_i) / tau)``,
        i.e. its weight at ``now`` rescaled by ``exp((now - ts_t) / tau)``.
        h: (B, T, D), pad: (B, T) -> (B, T, E); `seen`: `prefix_counts(pad, bags)` when the
        caller has them.
        """
        score = self.pool(h).squeeze(-1).float().masked_fill(pad, float("-inf"))  # (B, T)
        m = score.max(dim=1, keepdim=True).values.clamp(min=-1e4)  # (B, 1)
        e = torch.exp(score - m).masked_fill(pad, 0.0)  # (B, T)
        num = torch.cumsum(e.unsqueeze(-1) * h.float(), dim=1)  # (B, T, D)
        den = torch.cumsum(e, dim=1).clamp(min=1e-30).unsqueeze(-1)  # (B, T, 1)
        pooled = (num / den).to(h.dtype)  # (B, T, D)
        realf = (~pad).unsqueeze(-1).to(h.float().dtype)  # (B, T, 1)
        hsum = (torch.cumsum(h.float() * realf, dim=1) / self.cfg.max_events).to(h.dtype)
        raw64 = bags.raw.to(torch.float64)
        parts = [pooled, hsum, h, torch.cumsum(raw64, dim=1).to(h.dtype)]
        if bags.manner is not None:
            n = torch.cumsum((~pad).to(torch.float64), dim=1).clamp(min=1).unsqueeze(-1)
            mean = torch.cumsum(bags.manner.to(torch.float64), dim=1) / n
            parts.append(mean.to(h.dtype))
        for tau in self.cfg.decays_h:
            scaled = torch.cumsum(raw64 * bags.weight(tau, torch.float64), dim=1)  # (B, T, D)
            back = torch.exp(bags.hours.clamp(max=MAX_DECAY * tau) / tau).unsqueeze(-1)
            parts.append((scaled * back).to(h.dtype))
        # at prefix t (the vector at event t's time): recency 0, events i <= t counted
        # within each span of t's time (their age then: hours_i - hours_t)
        seen = self.prefix_counts(pad, bags) if seen is None else seen
        dense = self._dense(torch.zeros_like(bags.hours), torch.stack(seen, -1))
        parts.append(dense.to(h.dtype))  # (B, T, 1 + 1 + spans)
        counted = None
        if bags.counted is not None and self.vector_reads_counts:
            counted = self.prefix_count_features(bags, seen).to(h.dtype)
        return self._out(parts, counted)  # (B, T, E)

    def _counts(self) -> OutcomeCounts:
        assert self.counts is not None
        return self.counts

    @staticmethod
    def _dense(recency_h: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """(...), (..., C) -> (..., 1 + C): log1p of the hours since the newest event and of
        the window's event counts (all, then within each of `COUNT_SPANS_H`): recency,
        size and recent activity read straight into the vector (churn is mostly these)."""
        rec = torch.log1p(recency_h.clamp(min=0.0).float()).unsqueeze(-1)
        return torch.cat([rec, torch.log1p(counts.float())], -1)

    def _out(self, parts: list[torch.Tensor], counted: torch.Tensor | None) -> torch.Tensor:
        """(..., S_i) summaries and the window's outcome counts -> (..., E) user vectors
        (L2-normalised if configured): the counts join the summaries (`counts_in_vector`)
        and / or give the last `count_dims` components through `count_proj`."""
        if counted is not None and self.cfg.counts_in_vector:
            parts = [*parts, counted]
        z = self.proj(torch.cat(parts, -1)).float()
        if self.count_proj is not None:
            assert counted is not None, "count_dims: the window's counts were not computed"
            z = torch.cat([z, self.count_proj(counted).float()], -1)
        return F.normalize(z, dim=-1) if self.cfg.normalize else z
