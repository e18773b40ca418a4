"""Batch encoding throughput for 256-event windows: batched `Encoder` vs a naive eager loop.

Prints users/s for both, the model FLOPs per user, and the useful FLOP/s of each path
against a large matmul measured in the same run (the machine's practical peak). On a GPU
(when present) the same on CUDA with bf16 autocast.

    .venv/bin/python benchmarks/encode.py [--users 256] [--models DIR] [--device cpu|cuda]

Measured (2-core x86_64 CPU shared with other jobs, torch 2.13 CPU, 2 threads, 256 users):
- random-init model reading all 256 events: batch 84 users/s (17 GFLOP/s, 29% of a 2048^2
  matmul's 59 GFLOP/s), naive loop 53 users/s; 201 MFLOP per user.
- the trained default (reads the newest 64 events of a 256-event window): batch 546 users/s
  (21 GFLOP/s, 34% of peak), naive 142 users/s, 3.8x; 38 MFLOP per user.
  A later run on the busier machine (dense-age model): batch 374 users/s, naive 144, the
  matmul peak itself down to 27 GFLOP/s: compare paths within one run, not across runs.
On the CPU the batch path is limited by small (T x 128) matmuls, the key-padding mask taking
attention off the fused path, and Python tokenization (~30% of the batch time for the
64-event model, measured separately). No GPU was
available to this session: the CUDA + bf16 row has not been measured yet.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from contract.events import Event
from encoder.api import Encoder
from encoder.features import discover
from encoder.model import ModelConfig, UserEncoder
from encoder.synthetic import SyntheticConfig, generate
from encoder.tokenizer import Tokenizer, TokenizerConfig


def flops_per_user(cfg: ModelConfig, t: int) -> float:
    """Forward FLOPs of the dense part for one window of t events (matmuls only)."""
    d, f = cfg.d_model, cfg.d_ff
    per_token_layer = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * t * d  # projections, FF, attention
    return float(t * cfg.n_layers * per_token_layer + t * 2 * d + 2 * d * cfg.out_dim)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def windows_of(n: int, length: int) -> tuple[list[list[Event]], int]:
    ds = generate(SyntheticConfig(users=max(64, n // 2), events_per_user=400.0, seed=7))
    long = [w[-length:] for w in ds.windows().values() if len(w) >= length]
    assert long, "no user with enough events"
    return [long[i % len(long)] for i in range(n)], ds.config.end_ms


def bench(enc: Encoder, windows: list[list[Event]], now: int, naive_n: int) -> dict[str, float]:
    dev = enc.device
    enc.encode(windows[:8], now)  # warm up
    _sync(dev)
    t0 = time.perf_counter()
    enc.encode(windows, now)
    _sync(dev)
    batch_s = time.perf_counter() - t0
    tok = Tokenizer(enc.tokenizer.config)
    model = enc.model
    t0 = time.perf_counter()
    with torch.inference_mode():
        for w in windows[:naive_n]:  # the naive loop: one user at a time, eager
            model.encode_batch(tok.encode([w], now)).cpu()
    _sync(dev)
    naive_s = time.perf_counter() - t0
    return {"batch_ups": len(windows) / batch_s, "naive_ups": naive_n / naive_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--models", type=Path, default=None, help="load the active version from here")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    devices = (
        [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    windows, now = windows_of(args.users, args.length)
    rows = []
    for name in devices:
        if args.models:
            enc = Encoder.load(args.models, device=name)
        else:
            torch.manual_seed(0)
            spec = discover(generate(SyntheticConfig(users=200)).events)
            tok = TokenizerConfig(features=spec, max_events=args.length)
            model = UserEncoder(tok, ModelConfig(max_events=args.length)).eval()
            enc = Encoder("random-init", model, Tokenizer(tok), torch.device(name))
        dev = enc.device
        fl = flops_per_user(enc.model.cfg, min(args.length, enc.max_events))  # what it reads
        peak = matmul_peak(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
        r = bench(enc, windows, now, naive_n=min(len(windows), 64))
        rows.append((name, r, fl, peak))
    cfg = enc.model.cfg
    print(
        f"threads={torch.get_num_threads()} users={args.users} window={args.length} "
        f"model d={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads} "
        f"reads the newest {enc.max_events} events ({enc.version})"
    )
    hdr = (
        f"{'device':7s} {'path':7s} {'users/s':>10s} {'MFLOP/user':>11s} "
        f"{'GFLOP/s':>9s} {'peak GFLOP/s':>13s} {'% peak':>7s}"
    )
    print(hdr)
    for name, r, fl, peak in rows:
        for path, ups in (("batch", r["batch_ups"]), ("naive", r["naive_ups"])):
            gf = ups * fl / 1e9
            print(
                f"{name:7s} {path:7s} {ups:10.1f} {fl / 1e6:11.1f} {gf:9.2f} "
                f"{peak / 1e9:13.1f} {100 * gf / (peak / 1e9):6.1f}%"
            )
    print(
        "speed-up batch/naive: "
        + ", ".join(f"{n}={r['batch_ups'] / r['naive_ups']:.2f}x" for n, r, _, _ in rows)
    )


if __name__ == "__main__":
    main()
