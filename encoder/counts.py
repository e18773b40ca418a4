"""Outcome counts the user vector reads: how often each top event type and each top value
of every categorical property occurs in the window, over the whole window and within each
recent span, as log1p counts (what `encoder/evaluate_log.py`'s aggregates count).

Schema-free: the counted ids are the `OutcomeSpace` of the model's own feature spec (its
most frequent types and values), looked up from the token ids at encode time, so refresh
(which encodes windows) and training compute the same numbers.

Example: top values ``sku=(a1, a2)``, a window holding ``a1`` three times, once within the
last day: its ``sku=a1`` counts are ``log1p(3)`` over the window and ``log1p(1)`` in 1 d.
"""

from __future__ import annotations

import torch
from torch import nn

from encoder.outcomes import OutcomeSpace
from encoder.tokenizer import TokenizerConfig


class OutcomeCounts(nn.Module):
    """Per-event indicators of the top types/values, and their windowed log counts.

    Args:
        tok: the tokenizer config (its feature spec names the counted values).
        top: how many types and how many values of each categorical property are counted.
    """

    def __init__(self, tok: TokenizerConfig, top: int, spans: int, hidden: int = 0) -> None:
        super().__init__()
        space = OutcomeSpace.from_spec(tok.features, top, top)
        self.size = space.size - 1  # (any) is left out: the vector reads event counts already
        n = spans * self.size
        # optional: a small MLP beside the plain counts, so the vector can also hold products
        # of counts (e.g. how often a user orders times how often a value is in an order)
        self.mlp = (
            nn.Sequential(nn.Linear(n, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            if hidden > 0 and n > 0
            else None
        )
        self.out_size = n + (hidden if self.mlp is not None else 0)
        self.slots = space.slots
        for k, lut in enumerate(space.luts):
            # index 0 of the output is (any): ids without an outcome land there, dropped
            self.register_buffer(f"lut{k}", torch.from_numpy(lut.clip(min=0)), persistent=False)

    def indicators(self, ids: torch.Tensor) -> torch.Tensor:
        """(F, N) token ids -> (N, Y) float 0/1: which counted outcomes each event carries."""
        n = ids.shape[1]
        out = torch.zeros(n, self.size + 1, device=ids.device)
        if not self.slots:
            return out[:, 1:]
        cols = []
        for k, slot in enumerate(self.slots):
            lut = getattr(self, f"lut{k}")
            cols.append(lut[ids[slot].clamp(0, lut.shape[0] - 1)])
        out.scatter_(1, torch.stack(cols, 1), 1.0)
        return out[:, 1:]

    def features(self, logc: torch.Tensor) -> torch.Tensor:
        """(..., spans * Y) log counts -> (..., out_size): them, and the MLP's reading."""
        return logc if self.mlp is None else torch.cat([logc, self.mlp(logc)], -1)

    def window(self, ind: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        """(B, T, Y) indicators, masks (B, T) bool each (whole window, then spans) ->
        (B, out_size) log1p counts (and the MLP's reading)."""
        logc = [torch.log1p(torch.einsum("bt,bty->by", m.to(ind.dtype), ind)) for m in masks]
        return self.features(torch.cat(logc, -1))

    def prefixes(self, ind: torch.Tensor, counts: list[torch.Tensor]) -> torch.Tensor:
        """The counts as if the window ended at each position t: events t-n+1..t, n from
        `counts` (B, T) each (events seen by t within each span; spans end at t, so they
        are a suffix of 0..t). (B, T, Y) -> (B, T, out_size)."""
        b, t, y = ind.shape
        cum = torch.cat([ind.new_zeros(b, 1, y), torch.cumsum(ind.double(), 1).to(ind.dtype)], 1)
        end = cum[:, 1:]  # (B, T, Y) events 0..t
        pos = torch.arange(1, t + 1, device=ind.device).unsqueeze(0)  # (1, T)
        parts = []
        for n in counts:
            start = (pos - n).clamp(min=0).unsqueeze(-1).expand(b, t, y)
            parts.append(torch.log1p((end - cum.gather(1, start)).clamp(min=0)))
        return self.features(torch.cat(parts, -1))
