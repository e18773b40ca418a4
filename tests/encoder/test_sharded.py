"""Sharded (2 CPU processes, gloo, row-wise DMP) gives the same vectors as the plain module."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tiny():  # type: ignore[no-untyped-def]
    from encoder.features import SpecOptions, discover
    from encoder.model import ModelConfig
    from encoder.synthetic import SyntheticConfig, generate
    from encoder.tokenizer import TokenizerConfig

    ds = generate(SyntheticConfig(users=12, events_per_user=20.0, seed=11))
    spec = discover(ds.events, SpecOptions(min_value_count=2, min_events=5))
    tok = TokenizerConfig(features=spec, max_events=32)
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0, max_events=32)
    windows = [w for _, w in sorted(ds.windows(32).items())]
    return ds.config.end_ms, tok, cfg, windows


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from encoder.model import UserEncoder
    from encoder.sharded import encode_sharded, shard_model
    from encoder.tokenizer import Tokenizer

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        now, tok_cfg, cfg, windows = _tiny()
        torch.manual_seed(0)  # same weights on every rank
        model = UserEncoder(tok_cfg, cfg).eval()
        mine = windows[rank::WORLD]
        batch = Tokenizer(tok_cfg).encode(mine, now)
        with torch.no_grad():
            plain = model.encode_batch(batch).numpy()
        dmp = shard_model(model, torch.device("cpu"))
        sharded = encode_sharded(dmp, model.keys, batch).numpy()
        plans = [type(m).__name__ for m in dmp.modules()]
        np.savez(
            os.path.join(out_dir, f"rank{rank}.npz"),
            plain=plain,
            sharded=sharded,
            has_sharded_ec="ShardedEmbeddingCollection" in plans,
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_equals_unsharded(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    ctx = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    assert ctx is None  # join=True: both processes exited cleanly (spawn raises otherwise)
    for rank in range(WORLD):
        r = np.load(tmp_path / f"rank{rank}.npz")
        assert bool(r["has_sharded_ec"])
        assert r["plain"].shape == r["sharded"].shape and r["plain"].shape[0] > 0
        np.testing.assert_allclose(r["sharded"], r["plain"], atol=1e-5)
        # the vectors are real (finite, non-zero, not all equal)
        assert np.isfinite(r["plain"]).all() and (np.linalg.norm(r["plain"], axis=1) > 0).all()
        assert np.abs(r["plain"][0] - r["plain"][1]).max() > 1e-3
