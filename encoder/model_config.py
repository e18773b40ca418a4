"""The sequence model's sizes and options (`UserEncoder`, encoder/model.py), saved with each
version as ``model.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


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
    # log counts of this many top types and top values of each categorical property over
    # the window and its recent spans (`encoder/counts.py`): what the residual objective
    # (`ObjectiveConfig.w_residual`) sets the vector beside; 0: none (and no residual)
    count_top: int = 16
    count_hidden: int = 0  # and the output of an MLP of that width over those counts; 0: none
    # the vector itself also reads those counts (off: on MovieLens they cost the embedding
    # 0.022 mean AUC and on Instacart the residual did more beside them; README)
    counts_in_vector: bool = False
    # the vector also reads the mean over the window of each event's other embeddings
    # (numeric bins, gap, age): how the events look (slower clicks, shorter dwell) beside
    # what they are (the bags)
    manner_bag: bool = False
    # the last `count_dims` components of the vector are the counts' own summary: a linear
    # map of them (and of their MLP, `count_hidden`) trained only to predict the horizon
    # targets; the rest is the encoder's, trained as without it (needs normalize off).
    # 0: none (README "Options off by default" says what 16 gives and costs)
    count_dims: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        d = json.loads(text)
        # versions saved before `counts_in_vector` existed: their counts fed the vector
        in_vector = d.get("counts_in_vector", True)
        return cls(**{**d, "decays_h": tuple(d.get("decays_h", ())), "counts_in_vector": in_vector})
