"""The sequence model: TorchRec tables for the sparse ids, a small Transformer, one vector out.

Shapes: B windows, T = the longest window in the batch, D = ``d_model``, E = ``out_dim``,
N = total events in the batch (jagged), F = features per event.

    KeyedJaggedTensor (F keys, N ids each)
      -> EmbeddingCollection: one (rows, D) table per feature     # F x (N, D)
      -> sum over features                                        # (N, D)
      -> padded + reverse-position embedding (0 = newest event)  # (B, T, D)
      -> TransformerEncoder (causal, key padding mask)            # (B, T, D)
      -> attention pooling over real positions                    # (B, D)
      -> Linear + L2 normalise                                     # (B, E)

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls(**{"dense_age": False, **json.loads(text)})  # older versions: no dense age


def make_kjt(batch: TokenBatch, keys: tuple[str, ...], device: torch.device) -> KeyedJaggedTensor:
    """One KJT for a batch: key f holds the f-th id of every event, B jagged rows per key."""
    ids = torch.from_numpy(batch.ids).to(device)  # (F, N)
    lengths = torch.from_numpy(batch.lengths).to(device)  # (B,)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys),
        values=ids.reshape(-1),
        lengths=lengths.repeat(len(keys)),
    )


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
        self.bag_keys = tuple(k for k in self.keys if k == "type" or k.startswith("c"))
        self.proj = nn.Linear(4 * cfg.d_model, cfg.out_dim)
        self._init_tables()

    @torch.no_grad()
    def _init_tables(self) -> None:
        for p in self.ec.parameters():
            if p.device.type != "meta":
                p.normal_(0.0, 0.02)

    def embed(
        self, kjt: KeyedJaggedTensor, lengths: torch.Tensor, age_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sum of feature embeddings, padded: x (B, T, D), the pad mask (B, T), True = pad,
        and the sum of the type and categorical embeddings alone, raw (B, T, D): what the
        window's bag of values is made of."""
        out = self.ec(kjt)
        values = {k: out[k].values() for k in self.keys}
        cats = torch.stack([values[k] for k in self.bag_keys]).sum(0)  # (N, D)
        summed = cats + torch.stack([values[k] for k in self.keys if k not in self.bag_keys]).sum(0)
        if self.age_lin is not None and age_h is not None:
            summed = summed + self.age_lin(age_h.to(summed.dtype).unsqueeze(-1) / 4.0)  # (N, D)
        b = lengths.shape[0]
        t = int(lengths.max().item()) if b else 0
        t = max(t, 1)
        ar = torch.arange(t, device=lengths.device)  # (T,)
        real = ar.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        x = summed.new_zeros(b, t, summed.shape[-1])  # (B, T, D)
        x[real] = summed
        raw = torch.zeros_like(x)  # (B, T, D)
        raw[real] = cats
        rev = (lengths.unsqueeze(1) - 1 - ar.unsqueeze(0)).clamp(min=0)  # (B, T) 0 = newest
        x = x + self.pos(_pos_bucket(rev)) * real.unsqueeze(-1)
        return self.norm_in(x), ~real, raw

    def forward(
        self, kjt: KeyedJaggedTensor, lengths: torch.Tensor, age_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns hidden states (B, T, D), the pad mask (B, T), the user vectors (B, E) and
        the raw categorical embeddings (B, T, D) (for `prefix_vectors`).

        The user vector reads two summaries: attention pooling over all real positions, and
        the newest event's hidden state (causal: it has seen the whole window, and carries
        the window's recency through its age feature)."""
        x, pad, raw = self.embed(kjt, lengths, age_h)  # (B, T, D), (B, T), (B, T, D)
        t = x.shape[1]
        causal = torch.triu(torch.full((t, t), float("-inf"), device=x.device), diagonal=1)
        pad_f = torch.zeros_like(pad, dtype=x.dtype).masked_fill(pad, float("-inf"))  # (B, T)
        h = self.encoder(x, mask=causal.to(x.dtype), src_key_padding_mask=pad_f)  # (B, T, D)
        h = self.norm_out(h)
        score = self.pool(h).squeeze(-1).float().masked_fill(pad, float("-inf"))  # (B, T)
        w = torch.softmax(score, dim=1).nan_to_num(0.0)  # empty windows pool to zero
        pooled = torch.einsum("bt,btd->bd", w.to(h.dtype), h)  # (B, D)
        realf = (~pad).unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        bag = (h * realf).sum(1) / self.cfg.max_events  # (B, D) the window's sum: counts kept
        last = (lengths - 1).clamp(min=0)  # (B,) the newest event saw the whole window
        newest = h[torch.arange(h.shape[0], device=h.device), last]  # (B, D)
        newest = newest * (lengths > 0).unsqueeze(-1).to(h.dtype)
        raw_bag = raw.sum(1)  # (B, D) counts of the window's values, unscaled
        z = self._out(torch.cat([pooled, bag, newest, raw_bag], -1))  # (B, E)
        return h, pad, z, raw

    def prefix_vectors(self, h: torch.Tensor, pad: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """The user vector of every prefix (training only): z_t as if the window ended at t.

        Attention pooling as running sums, so z at the newest position equals `forward`'s.
        h: (B, T, D), pad: (B, T) -> (B, T, E).
        """
        score = self.pool(h).squeeze(-1).float().masked_fill(pad, float("-inf"))  # (B, T)
        m = score.max(dim=1, keepdim=True).values.clamp(min=-1e4)  # (B, 1)
        e = torch.exp(score - m).masked_fill(pad, 0.0)  # (B, T)
        num = torch.cumsum(e.unsqueeze(-1) * h.float(), dim=1)  # (B, T, D)
        den = torch.cumsum(e, dim=1).clamp(min=1e-30).unsqueeze(-1)  # (B, T, 1)
        pooled = (num / den).to(h.dtype)  # (B, T, D)
        realf = (~pad).unsqueeze(-1).to(h.float().dtype)  # (B, T, 1)
        bag = (torch.cumsum(h.float() * realf, dim=1) / self.cfg.max_events).to(h.dtype)
        raw_bag = torch.cumsum(raw.float(), dim=1).to(h.dtype)
        return self._out(torch.cat([pooled, bag, h, raw_bag], -1))  # (B, T, E)

    def _out(self, summary: torch.Tensor) -> torch.Tensor:
        """(..., 3D) summaries -> (..., E) user vectors (L2-normalised if configured)."""
        z = self.proj(summary).float()
        return F.normalize(z, dim=-1) if self.cfg.normalize else z

    def encode_batch(self, batch: TokenBatch) -> torch.Tensor:
        """Token batch to user vectors (B, E), on this module's device."""
        dev = self.pos.weight.device
        kjt = make_kjt(batch, self.keys, dev)
        age = torch.from_numpy(batch.age_h).to(dev)  # (N,)
        _, _, z, _ = self(kjt, torch.from_numpy(batch.lengths).to(dev), age)
        return z
