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

This module holds the tables, the placing of events in windows and the layers; what the
vector reads after them is `encoder/summaries.py`, the sizes `encoder/model_config.py`.
For inference, everything after the table lookups is `UserEncoder.vectors`, which
`encoder/compiled.py` compiles as one graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from encoder.counts import OutcomeCounts
from encoder.model_config import ModelConfig
from encoder.summaries import COUNT_SPANS_H, Bags, Summaries
from encoder.tokenizer import TokenBatch, TokenizerConfig

__all__ = ["Bags", "Lookups", "ModelConfig", "UserEncoder", "make_kjt", "positions"]


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


def _rows_at(flat: torch.Tensor, at: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(N, ...) jagged rows -> (B, T, ...): row ``at[b, t]``, zero where `real` (B, T) is
    False. For inference a gather of computed indices, not a masked scatter: no shape
    depends on the data, so one compiled graph serves every batch (`encoder/compiled.py`).
    In training the scatter (its backward is a gather; the gather's, a slower index_add)."""
    if flat.requires_grad:
        if flat.shape[0] == real.numel():  # every window T long: no padding to place
            return flat.view(*real.shape, *flat.shape[1:])
        out = flat.new_zeros(*real.shape, *flat.shape[1:])
        out[real] = flat
        return out
    if flat.shape[0] == 0:  # no events at all: every position is padding
        return flat.new_zeros(*real.shape, *flat.shape[1:])
    got = flat[at.clamp(max=flat.shape[0] - 1)]  # (B, T, ...)
    keep = real.view(*real.shape, *([1] * (flat.dim() - 1)))
    return torch.where(keep, got, torch.zeros((), dtype=got.dtype, device=got.device))


class Lookups(NamedTuple):
    """A batch after its table lookups: N events in B windows of at most T positions."""

    static: torch.Tensor  # (N, D) each event's bag-key embeddings summed (`_lookup`)
    summed: torch.Tensor  # (N, D) all its embeddings summed
    lengths: torch.Tensor  # (B,) int64 events per window
    ar: torch.Tensor  # (T,) 0..T-1 (`positions`): T as a shape, symbolic when compiled
    age_h: torch.Tensor | None  # (N,) float32 log1p hours before now
    counted: torch.Tensor | None  # (N, Y) `OutcomeCounts.indicators` (`count_top`)


def positions(lengths: torch.Tensor) -> torch.Tensor:
    """(T,) 0..T-1, T the longest window of the batch (at least 1)."""
    t = max(int(lengths.max().item()) if lengths.shape[0] else 0, 1)
    return torch.arange(t, device=lengths.device)


def _pos_bucket(rev: Any) -> Any:
    """Log-spaced buckets of the distance from the newest event (0, 1, 2, 3, 4-5, 6-7, ...):
    exact for recent events, shared for old ones, so windows longer than the training
    windows reuse trained rows. Works on ints and on int tensors."""
    if isinstance(rev, int):
        return rev if rev < 4 else int(2 * math.log2(rev))
    r = rev.float().clamp(min=1.0)
    return torch.where(rev < 4, rev, (2 * torch.log2(r)).long())


class UserEncoder(Summaries, nn.Module):
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
        spans = 1 + len(COUNT_SPANS_H)
        self.counts = (
            OutcomeCounts(tok, cfg.count_top, spans, cfg.count_hidden) if cfg.count_top else None
        )
        n_counted = self.counts.out_size if self.counts and cfg.counts_in_vector else 0
        # the counts feed the training loss too (`ObjectiveConfig.w_residual`): set by the
        # training run; False: encoding reads them only where the vector does
        self.counts_for_loss = False
        if cfg.count_dims and (self.counts is None or cfg.count_dims >= cfg.out_dim):
            raise ValueError("count_dims needs count_top > 0 and fewer than out_dim components")
        if cfg.count_dims and cfg.normalize:  # one norm over both parts would mix their training
            raise ValueError("count_dims needs normalize off")
        self.count_proj = (
            nn.Linear(self.counts.out_size, cfg.count_dims)
            if self.counts is not None and cfg.count_dims
            else None
        )
        self.proj = nn.Linear(
            n_summaries * cfg.d_model + 2 + len(COUNT_SPANS_H) + n_counted,
            cfg.out_dim - cfg.count_dims,
        )
        self._init_tables()
        # inference: `vectors` compiled (`encoder/compiled.py`), which `encode_batch` calls
        # after the table lookups in its place; None: `vectors` itself
        self.tail: Callable[[Lookups], torch.Tensor] | None = None

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
        return self.place(self.lookups(kjt, lengths, age_h))

    @property
    def reads_counts(self) -> bool:
        """Whether `lookups` computes the counted outcomes' indicators: the vector reads
        them (`vector_reads_counts`), or the training loss does (`counts_for_loss`)."""
        return self.vector_reads_counts or (self.counts is not None and self.counts_for_loss)

    def lookups(
        self, kjt: KeyedJaggedTensor, lengths: torch.Tensor, age_h: torch.Tensor | None
    ) -> Lookups:
        """The table lookups of a batch (and the counted outcomes' indicators)."""
        static, summed = self._lookup(kjt)  # (N, D) each
        counted = None
        if self.reads_counts:
            assert self.counts is not None
            counted = self.counts.indicators(kjt.values().view(len(self.keys), -1))
        return Lookups(static, summed, lengths, positions(lengths), age_h, counted)

    def place(self, w: Lookups) -> tuple[torch.Tensor, torch.Tensor, Bags]:
        """`embed` after the table lookups: the events' (N, D) sums placed in their windows
        (B, T = len(w.ar), D) with positions and ages; see `embed`."""
        lengths, ar, age_h = w.lengths, w.ar, w.age_h
        summed = w.summed
        if self.age_lin is not None and age_h is not None:
            summed = summed + self.age_lin(age_h.to(summed.dtype).unsqueeze(-1) / 4.0)  # (N, D)
        real = ar.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        at = (torch.cumsum(lengths, 0) - lengths).unsqueeze(1) + ar.unsqueeze(0)  # (B, T)
        x = _rows_at(summed, at, real)  # (B, T, D)
        raw = _rows_at(w.static, at, real)  # (B, T, D)
        manner = _rows_at(w.summed - w.static, at, real) if self.cfg.manner_bag else None
        if age_h is not None:  # (B, T) hours before now, 0 at padding
            hours = _rows_at(torch.expm1(age_h.to(torch.float64)), at, real)
        else:
            hours = torch.zeros(real.shape, dtype=torch.float64, device=x.device)
        rev = (lengths.unsqueeze(1) - 1 - ar.unsqueeze(0)).clamp(min=0)  # (B, T) 0 = newest
        x = x + self.pos(_pos_bucket(rev)) * real.unsqueeze(-1)
        counted = None if w.counted is None else _rows_at(w.counted, at, real)  # (B, T, Y)
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
        return h, pad, self.summarise(h, pad, lengths, bags), bags

    def vectors(self, w: Lookups) -> torch.Tensor:
        """`forward`'s user vectors (B, E) from the table lookups on: the part of an encode
        `encoder/compiled.py` compiles as one graph. Under autocast (a bf16 encoder) the
        residual stream is in bf16 too: autocast keeps it in float32, and its adds and
        norms then move twice the bytes (the norms still compute in float32)."""
        x, pad, bags = self.place(w)
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            x = x.to(torch.get_autocast_dtype(dev))
        h = self.norm_out(self.layers(x))  # (B, T, D)
        return self.summarise(h, pad, w.lengths, bags)

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

    def encode_batch(self, batch: TokenBatch) -> torch.Tensor:
        """Token batch to user vectors (B, E), on this module's device."""
        dev = self.pos.weight.device
        kjt = make_kjt(batch, self.keys, dev)
        age = torch.from_numpy(batch.age_h).to(dev)  # (N,)
        lengths = torch.from_numpy(batch.lengths).to(dev)
        return (self.tail or self.vectors)(self.lookups(kjt, lengths, age))
