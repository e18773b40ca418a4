"""The sequence model: TorchRec tables for the sparse ids, a small Transformer, one vector out.

Shapes: B windows, T = the longest window in the batch, D = ``d_model``, E = ``out_dim``,
N = total events in the batch (jagged), F = features per event, S = 4 + decay scales.

    KeyedJaggedTensor (F keys, N ids each)
      -> EmbeddingCollection: one (rows, D) table per feature     # F x (N, D)
      -> sum over features                                        # (N, D)
      -> padded + reverse-position embedding (0 = newest event)  # (B, T, D)
      -> TransformerEncoder (causal, key padding mask)            # (B, T, D)
      -> summaries: attention pooling, sum of states, newest state,
         bags of the events' own embeddings (plain and decayed)   # (B, S * D)
         recency and event counts, and (`ModelConfig.count_top`) log counts of the top
         types/values over the window and its spans, read also by a small MLP
         (`encoder/counts.py`)
      -> Linear                                                   # (B, E)

The bags give the vector what hand-made aggregates count (how often each value occurs in
the window, recently and overall) and are why it is not L2-normalised by default: its
length carries those counts (lookalike search normalises a copy; `ModelConfig.normalize`
makes unit vectors). Example: a window holding sku ``a7`` three times, once yesterday,
adds three ``a7`` rows to the plain bag and about ``exp(-1)`` of one to the daily bag.

The EmbeddingCollection is the only part that grows with the data (item buckets etc.), so
it is what `DistributedModelParallel` shards (see `encoder/sharded.py`); the dense part is
replicated. Padding never changes a vector: padded positions are masked in attention and
pooling, and positions are counted from the newest event, not from the padded end.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from encoder.counts import OutcomeCounts
from encoder.tokenizer import TokenBatch, TokenizerConfig


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    dropout: float = 0.1
    out_dim: int = 64
    max_events: int = 64
    dense_age: bool = True  # add the exact log age (a Linear of one number) to each event
    normalize: bool = False  # unit vectors (cosine only) or vectors whose length carries counts
    # time scales (hours) of bags decayed by age, beside the plain bag; none by default: on
    # Instacart (1, 7, 30 days) measured 0.773 against 0.776 mean AUC without
    decays_h: tuple[float, ...] = ()
    # the vector reads log counts of this many top types and top values of each categorical
    # property over the window and its recent spans (`encoder/counts.py`); 0: none
    count_top: int = 0
    count_hidden: int = 0  # and the output of an MLP of that width over those counts; 0: none
    # the vector also reads the mean over the window of each event's other embeddings
    # (numeric bins, gap, age): how the events look (slower clicks, shorter dwell) beside
    # what they are (the bags)
    manner_bag: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        d = json.loads(text)
        return cls(**{**d, "decays_h": tuple(d.get("decays_h", ()))})


_COUNT_SPANS_H = (24.0, 168.0, 720.0)  # the vector reads event counts of the last 1 d, 1 w, 30 d
_MAX_DECAY = 600.0  # exp(600) fits a float64: older events weigh exp(-600), i.e. nothing


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
        w = torch.exp(-self.hours.clamp(max=_MAX_DECAY * tau_h) / tau_h).unsqueeze(-1)
        return w.to(dtype or self.raw.dtype)


def make_kjt(batch: TokenBatch, keys: tuple[str, ...], device: torch.device) -> KeyedJaggedTensor:
    """One KJT for a batch: key f holds the f-th id of every event, B jagged rows per key."""
    ids = torch.from_numpy(batch.ids).to(device)  # (F, N)
    lengths = torch.from_numpy(batch.lengths).to(device)  # (B,)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys),
        values=ids.reshape(-1),
        lengths=lengths.repeat(len(keys)),
    )


def _sum(parts: list[torch.Tensor]) -> torch.Tensor:
    """Sum of same-shaped tensors, added in place into one new buffer (no stacked copy)."""
    acc = parts[0].clone()
    for p in parts[1:]:
        acc = acc + p if acc.requires_grad else acc.add_(p)
    return acc


def _pad(flat: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(N, D) jagged rows -> (B, T, D), zero where `real` (B, T) is False."""
    out = flat.new_zeros(*real.shape, flat.shape[-1])
    out[real] = flat
    return out


def _pos_bucket(rev: Any) -> Any:
    """Log-spaced buckets of the distance from the newest event (0, 1, 2, 3, 4-5, 6-7, ...):
    exact for recent events, shared for old ones, so windows longer than the training
    windows reuse trained rows. Works on ints and on int tensors."""
    if isinstance(rev, int):
        return rev if rev < 4 else int(2 * math.log2(rev))
    r = rev.float().clamp(min=1.0)
    return torch.where(rev < 4, rev, (2 * torch.log2(r)).long())


class UserEncoder(nn.Module):
    """Windows of token ids in, one L2-normalised vector per window out.

    Args:
        tok: the tokenizer config (fixes the features and their table sizes).
        cfg: the dense model's sizes.
        device: where the tables are created ("meta" lets DMP materialise them sharded).
    """

    def __init__(
        self, tok: TokenizerConfig, cfg: ModelConfig, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.tok, self.cfg = tok, cfg
        self.keys = tok.feature_names
        rows = tok.num_embeddings()
        self.ec = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=f"t_{k}",
                    embedding_dim=cfg.d_model,
                    num_embeddings=rows[k],
                    feature_names=[k],
                )
                for k in self.keys
            ],
            device=device or torch.device("cpu"),
        )
        self.pos = nn.Embedding(_pos_bucket(cfg.max_events) + 1, cfg.d_model)
        nn.init.normal_(self.pos.weight, 0.0, 0.02)
        self.age_lin = nn.Linear(1, cfg.d_model) if cfg.dense_age else None
        self.norm_in = nn.LayerNorm(cfg.d_model)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(cfg.d_model)
        self.pool = nn.Linear(cfg.d_model, 1)
        # the bags sum what an event is: its type and categorical values (numeric bins and
        # gaps in the bags drowned the values' counts: 0.69 against 0.78 mean AUC, Instacart)
        self.bag_keys = tuple(k for k in self.keys if k == "type" or k.startswith("c"))
        n_summaries = 4 + len(cfg.decays_h) + int(cfg.manner_bag)
        spans = 1 + len(_COUNT_SPANS_H)
        self.counts = (
            OutcomeCounts(tok, cfg.count_top, spans, cfg.count_hidden) if cfg.count_top else None
        )
        n_counted = self.counts.out_size if self.counts else 0
        self.proj = nn.Linear(
            n_summaries * cfg.d_model + 2 + len(_COUNT_SPANS_H) + n_counted, cfg.out_dim
        )
        self._init_tables()

    @torch.no_grad()
    def _init_tables(self) -> None:
        for p in self.ec.parameters():
            if p.device.type != "meta":
                p.normal_(0.0, 0.02)

    def fuse_tables(self) -> None:
        """For inference: every table becomes a view of one matrix, so `embed` gathers and
        sums an event's ids with one `embedding_bag` per group (the bag keys, the rest)
        instead of a lookup and an add per feature (no second copy of the tables; weights
        updated in place stay visible to both). Call it after the move to the device."""
        tables = [self.ec.embeddings[f"t_{k}"].weight for k in self.keys]
        big = torch.cat([t.detach() for t in tables])  # (sum of rows, D)
        starts = [0]
        for t in tables:
            starts.append(starts[-1] + t.shape[0])
        with torch.no_grad():
            for t, lo in zip(tables, starts, strict=False):
                t.data = big[lo : lo + t.shape[0]]
        offsets = torch.tensor(starts[:-1], device=big.device).unsqueeze(1)  # (F, 1)
        bag = [i for i, k in enumerate(self.keys) if k in self.bag_keys]
        rest = [i for i, k in enumerate(self.keys) if k not in self.bag_keys]
        self._fused = (big, offsets, bag, rest)

    def _lookup(self, kjt: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(static, summed) (N, D): each event's bag-key embeddings summed, and all of them."""
        fused = getattr(self, "_fused", None)
        if fused is not None and not self.training and fused[0].device == kjt.values().device:
            big, offsets, bag, rest = fused
            ids = kjt.values().view(len(self.keys), -1) + offsets  # (F, N) rows of `big`
            static = F.embedding_bag(ids[bag].T.contiguous(), big, mode="sum")
            return static, static + F.embedding_bag(ids[rest].T.contiguous(), big, mode="sum")
        out = self.ec(kjt)
        static = _sum([out[k].values() for k in self.bag_keys])
        return static, _sum(
            [static, *(out[k].values() for k in self.keys if k not in self.bag_keys)]
        )

    def embed(
        self, kjt: KeyedJaggedTensor, lengths: torch.Tensor, age_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, Bags]:
        """Sum of feature embeddings, padded: x (B, T, D), the pad mask (B, T), True = pad,
        and what the window's bags are made of (`Bags`)."""
        static, summed = self._lookup(kjt)  # (N, D) each
        plain = summed
        if self.age_lin is not None and age_h is not None:
            summed = summed + self.age_lin(age_h.to(summed.dtype).unsqueeze(-1) / 4.0)  # (N, D)
        b = lengths.shape[0]
        t = int(lengths.max().item()) if b else 0
        t = max(t, 1)
        ar = torch.arange(t, device=lengths.device)  # (T,)
        real = ar.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        full = summed.shape[0] == b * t  # every window t long: no padding to place
        d = summed.shape[-1]
        x = summed.view(b, t, d) if full else _pad(summed, real)  # (B, T, D)
        raw = static.view(b, t, d) if full else _pad(static, real)  # (B, T, D)
        manner = None
        if self.cfg.manner_bag:
            rest = plain - static  # numeric bins, gap, age (before the exact age)
            manner = rest.view(b, t, d) if full else _pad(rest, real)
        hours = torch.zeros(b, t, dtype=torch.float64, device=x.device)  # (B, T)
        if age_h is not None:
            hours[real] = torch.expm1(age_h.to(torch.float64))
        rev = (lengths.unsqueeze(1) - 1 - ar.unsqueeze(0)).clamp(min=0)  # (B, T) 0 = newest
        x = x + self.pos(_pos_bucket(rev)) * real.unsqueeze(-1)
        counted = None
        if self.counts is not None:
            ind = self.counts.indicators(kjt.values().view(len(self.keys), -1))  # (N, Y)
            counted = ind.view(b, t, -1) if full else _pad(ind, real)  # (B, T, Y)
        return self.norm_in(x), ~real, Bags(raw, hours, counted, manner)

    def forward(
        self, kjt: KeyedJaggedTensor, lengths: torch.Tensor, age_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Bags]:
        """Returns hidden states (B, T, D), the pad mask (B, T), the user vectors (B, E) and
        the window's bag inputs (for `prefix_vectors`).

        The user vector reads: attention pooling over the hidden states, their sum, the
        newest event's hidden state (causal: it has seen the whole window, and carries the
        window's recency through its age feature), and the bags (`Bags`)."""
        x, pad, bags = self.embed(kjt, lengths, age_h)  # (B, T, D), (B, T)
        h = self.norm_out(self.layers(x))  # (B, T, D)
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
        recent = [((bags.hours <= w) & real).sum(1) for w in _COUNT_SPANS_H]  # (B,) each
        dense = self._dense(recency, torch.stack([lengths.to(recent[0].dtype), *recent], -1))
        parts = [pooled, hsum, newest, bags.raw.sum(1), *decayed, dense]
        if bags.manner is not None:
            n = lengths.clamp(min=1).unsqueeze(-1).to(h.dtype)  # (B, 1)
            parts.insert(4, bags.manner.sum(1) / n)
        if bags.counted is not None:
            masks = [real] + [(bags.hours <= w) & real for w in _COUNT_SPANS_H]
            parts.append(self._counts().window(bags.counted, masks).to(h.dtype))
        return h, pad, self._out(torch.cat(parts, -1)), bags

    def prefix_vectors(self, h: torch.Tensor, pad: torch.Tensor, bags: Bags) -> torch.Tensor:
        """The user vector of every prefix (training only): z_t as if the window ended at t.

        Attention pooling and the bags as running sums, so z at the newest position equals
        `forward`'s. A decayed bag at t weighs event i by ``exp(-(ts_t - ts_i) / tau)``,
        i.e. its weight at ``now`` rescaled by ``exp((now - ts_t) / tau)``.
        h: (B, T, D), pad: (B, T) -> (B, T, E).
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
            seen = torch.cumsum((~pad).to(torch.float64), dim=1).clamp(min=1).unsqueeze(-1)
            mean = torch.cumsum(bags.manner.to(torch.float64), dim=1) / seen
            parts.append(mean.to(h.dtype))
        for tau in self.cfg.decays_h:
            scaled = torch.cumsum(raw64 * bags.weight(tau, torch.float64), dim=1)  # (B, T, D)
            back = torch.exp(bags.hours.clamp(max=_MAX_DECAY * tau) / tau).unsqueeze(-1)
            parts.append((scaled * back).to(h.dtype))
        # at prefix t (the vector at event t's time): recency 0, events i <= t counted
        # within each span of t's time (their age then: hours_i - hours_t)
        t = h.shape[1]
        before = torch.tril(torch.ones(t, t, dtype=torch.bool, device=h.device))  # (t, i)
        seen = before.unsqueeze(0) & (~pad).unsqueeze(1)  # (B, t, i)
        age = bags.hours.unsqueeze(1) - bags.hours.unsqueeze(2)  # (B, t, i)
        counts = [seen.sum(-1)] + [(seen & (age <= w)).sum(-1) for w in _COUNT_SPANS_H]
        dense = self._dense(torch.zeros_like(bags.hours), torch.stack(counts, -1))
        parts.append(dense.to(h.dtype))  # (B, T, 1 + 1 + spans)
        if bags.counted is not None:
            parts.append(self._counts().prefixes(bags.counted, counts).to(h.dtype))
        return self._out(torch.cat(parts, -1))  # (B, T, E)

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """The Transformer layers (pre-norm, causal) with fused causal attention.

        Padding sits after each window's newest event, so under the causal mask no real
        position ever sees a padded one: the causal mask alone gives real positions what a
        key-padding mask would (padded positions are masked out downstream), and it lets
        `scaled_dot_product_attention` take its fused causal kernel (flash attention on
        the CPU) instead of materialising masked (B, H, T, T) scores. Same weights and
        math as `nn.TransformerEncoderLayer(norm_first=True)`, whose modules hold them
        (1.9x faster than its fast path on the CPU, measured in `benchmarks/encode.py`)."""
        b, t, d = x.shape
        heads = self.cfg.n_heads
        for layer in self.encoder.layers:
            sa: Any = layer.self_attn
            qkv = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias)  # (B, T, 3D)
            q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            p = sa.dropout if self.training else 0.0
            a = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            a = a.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
            x = x + layer.dropout1(sa.out_proj(a))
            ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x)))))
            x = x + layer.dropout2(ff)
        return x

    def _counts(self) -> OutcomeCounts:
        assert self.counts is not None
        return self.counts

    @staticmethod
    def _dense(recency_h: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """(...), (..., C) -> (..., 1 + C): log1p of the hours since the newest event and of
        the window's event counts (all, then within each of `_COUNT_SPANS_H`): recency,
        size and recent activity read straight into the vector (churn is mostly these)."""
        rec = torch.log1p(recency_h.clamp(min=0.0).float()).unsqueeze(-1)
        return torch.cat([rec, torch.log1p(counts.float())], -1)

    def _out(self, summary: torch.Tensor) -> torch.Tensor:
        """(..., S) summaries -> (..., E) user vectors (L2-normalised if configured)."""
        z = self.proj(summary).float()
        return F.normalize(z, dim=-1) if self.cfg.normalize else z

    def encode_batch(self, batch: TokenBatch) -> torch.Tensor:
        """Token batch to user vectors (B, E), on this module's device."""
        dev = self.pos.weight.device
        kjt = make_kjt(batch, self.keys, dev)
        age = torch.from_numpy(batch.age_h).to(dev)  # (N,)
        _, _, z, _ = self(kjt, torch.from_numpy(batch.lengths).to(dev), age)
        return z
