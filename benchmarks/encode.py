"""Batch encoding throughput for 256-event windows: the `Encoder` against its reference
forward and a naive eager loop, in the same run.

Paths, taking turns in each round (a shared machine's load moves between rounds, so each
round's ratios and its own matmul peak are what to compare):
- batch: `Encoder.encode` (column-wise tokenising, one `embedding_bag` per group over the
  fused tables, causal `scaled_dot_product_attention`);
- reference: the same windows and weights through the reference forward the fast paths
  replace (event-by-event tokenising, one lookup per table, `nn.TransformerEncoder` with
  causal and key-padding masks);
- naive: one user at a time through the batch path;
- compiled (CPU, when a C++ compiler is present): the batch path with everything after
  its table lookups compiled as one graph (`Encoder(compile=True)`, `encoder/compiled.py`);
- bf16, compiled bf16 (a CPU with native bf16, `encoder.api.cpu_bf16`): the batch and
  compiled paths in bf16 autocast (`Encoder(bf16=True)`); their "% peak" is still against
  the float32 matmul, and the run prints the bf16 matmul's rate beside it;
- streams: the fastest of those with `--streams` passes at once (default: one per core),
  each on its own thread with 1/streams of the torch threads (`Encoder(streams=N)`,
  `encoder/streams.py`).

Prints users/s, the useful FLOP/s against a 2048^2 matmul measured in the same round (the
machine's practical peak), and the medians of the per-round batch / reference and
compiled / batch ratios. On a
GPU (when present) the same on CUDA with bf16 autocast.

`--stages` then times one forward pass of the first path (compiled bf16, else compiled)
stage by stage (tokenise, the table lookups, then the compiled graph, beside the eager
placing, layers and pooling and bags) as its best of 15.

    .venv/bin/python benchmarks/encode.py [--users 256] [--rounds 3] [--models DIR] [--stages]
        [--streams N]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from contract.events import Event
from encoder.api import Encoder, cpu_bf16
from encoder.features import discover
from encoder.model import ModelConfig, UserEncoder, make_kjt
from encoder.synthetic import SyntheticConfig, generate
from encoder.tokenizer import Tokenizer, TokenizerConfig


def layer_flops(cfg: ModelConfig, t: int) -> float:
    """Forward FLOPs of the Transformer layers for one window of t events (matmuls only)."""
    d, f = cfg.d_model, cfg.d_ff
    per_token_layer = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * t * d  # projections, FF, attention
    return float(t * cfg.n_layers * per_token_layer)


def flops_per_user(cfg: ModelConfig, t: int) -> float:
    """Forward FLOPs of the dense part for one window of t events (matmuls only)."""
    d = cfg.d_model
    return layer_flops(cfg, t) + t * 2 * d + 2 * d * cfg.out_dim


def matmul_peak(
    device: torch.device, n: int = 2048, reps: int = 3, dtype: torch.dtype | None = None
) -> float:
    """FLOP/s of an n x n matmul, the best of `reps` (as each encode path is timed): float32
    on the CPU, bf16 on CUDA (the dtype each device's encoder computes in by default)."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def windows_of(n: int, length: int) -> tuple[list[list[Event]], int]:
    ds = generate(SyntheticConfig(users=max(64, n // 2), events_per_user=400.0, seed=7))
    long = [w[-length:] for w in ds.windows().values() if len(w) >= length]
    assert long, "no user with enough events"
    return [long[i % len(long)] for i in range(n)], ds.config.end_ms


class _ReferenceTokenizer(Tokenizer):
    def static_matrix(self, events):
        rows = [self.static_ids(e) for e in events]  # event by event
        return np.asarray(rows, dtype=np.int32).reshape(len(events), self.n_static)


class ReferenceModel(UserEncoder):
    """The reference forward: one lookup per table (the encoder is made with
    ``fuse_tables=False``), `nn.TransformerEncoder` with masks."""

    def place(self, w):
        x, pad, bags = super().place(w)
        self._pad = pad
        return x, pad, bags

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        causal = torch.triu(torch.full((t, t), float("-inf"), device=x.device), diagonal=1)
        pad_f = torch.zeros_like(self._pad, dtype=x.dtype).masked_fill(self._pad, float("-inf"))
        return self.encoder(x, mask=causal.to(x.dtype), src_key_padding_mask=pad_f)


def reference_encoder(enc: Encoder) -> Encoder:
    """The same weights through the reference forward (see the module docstring)."""
    model = ReferenceModel(enc.model.tok, enc.model.cfg)
    model.load_state_dict(enc.model.state_dict())
    tok = _ReferenceTokenizer(enc.tokenizer.config)
    return Encoder("reference", model, tok, enc.device, fuse_tables=False)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def copy_of(enc: Encoder, compile: bool, bf16: bool = False, streams: int = 1) -> Encoder:
    """Another CPU encoder of the same weights (compiled when asked: encoder/compiled.py;
    in bf16 autocast when asked; on `streams` threads)."""
    model = UserEncoder(enc.model.tok, enc.model.cfg)
    model.load_state_dict(enc.model.state_dict())
    return Encoder.from_model(model, enc.version, compile=compile, bf16=bf16, streams=streams)


def bench(
    paths: dict[str, Encoder], windows: list[list[Event]], now: int, naive_n: int
) -> dict[str, tuple[float, float]]:
    """(users/s, matmul FLOP/s) of each path (the encoders take turns) and of `naive`.

    Each path is timed as its best of 3 encodes, each right after a 2048^2 matmul (whose
    best of the 3 is that path's peak: the machine is shared, and a peak measured minutes
    away from the encode it divides swung the ratio by 1.5x) and one untimed encode: the
    first encode after the matmul ran 12-17 % slower than the next (44.5-46.2 ms against
    39.2-39.9 for 256 windows, compiled bf16; after touching 48 MB instead, 40.3: the
    matmul's 48 MB of operands evict the encoder's working set, and more), where a
    refresher encodes batch after batch."""
    enc = paths["batch"]
    dev = enc.device
    for e in paths.values():
        e.encode(windows[:8], now)  # warm up

    def run(e: Encoder) -> None:
        e.encode(windows, now)
        _sync(dev)

    def naive() -> None:
        with torch.inference_mode():
            for w in windows[:naive_n]:  # one user at a time
                enc.model.encode_batch(enc.tokenizer.encode([w], now)).cpu()
        _sync(dev)

    def paired(fn: Callable[[], None], users: int) -> tuple[float, float]:
        runs = []
        for _ in range(3):
            peak = matmul_peak(dev, reps=1)
            fn()  # untimed (see above)
            runs.append((peak, timed(fn)))
        return users / min(t for _, t in runs), max(p for p, _ in runs)

    out = {name: paired(functools.partial(run, e), len(windows)) for name, e in paths.items()}
    return {**out, "naive": paired(naive, naive_n)}


def stages(enc: Encoder, windows: list[list[Event]], now: int, reps: int = 15) -> None:
    """Where one forward pass's time goes (its best of `reps`, the stages timed apart):
    the first `Encoder.max_tokens` worth of windows, as `Encoder.encode` cuts them. A compiled
    encoder's stages after the table lookups are one graph (`encoder/compiled.py`)."""
    m, dev = enc.model, enc.device
    group = windows[: max(1, enc.max_tokens // enc.max_events)]
    peak = matmul_peak(dev)

    def best(fn: Callable[[], object]) -> float:
        return min(timed(fn) for _ in range(reps)) * 1e3

    with torch.inference_mode(), enc.autocast():
        batch = enc.tokenizer.encode(group, now)
        kjt = make_kjt(batch, m.keys, dev)
        lengths, age = torch.from_numpy(batch.lengths), torch.from_numpy(batch.age_h)
        w = m.lookups(kjt, lengths, age)
        x = m.place(w)[0]
        t = {
            "tokenise": best(lambda: enc.tokenizer.encode(group, now)),
            "lookups": best(lambda: m.lookups(kjt, lengths, age)),
            "place": best(lambda: m.place(w)),
            "layers": best(lambda: m.layers(x)),
            "vectors": best(lambda: m.vectors(w)),
            "encode": best(lambda: enc.encode(group, now)),
        }
        if (tail := m.tail) is not None:
            t["graph"] = best(lambda: tail(w))
    n = int(batch.lengths.sum())
    layer_fl = sum(layer_flops(m.cfg, int(t)) for t in batch.lengths)
    pooling = t["vectors"] - t["place"] - t["layers"]
    eager = (
        f"eager: placing {t['place']:.2f}, layers {t['layers']:.2f}"
        f" ({100 * layer_fl / (t['layers'] / 1e3) / peak:.0f} % of the matmul),"
        f" pooling and bags {pooling:.2f}"
    )
    after = f"compiled graph {t['graph']:.2f} ms ({eager})" if "graph" in t else eager
    print(
        f"stages of one pass ({len(group)} windows, {n} events, {enc.version},"
        f" {'bf16' if enc.bf16 else 'float32'}), best of {reps}:"
        f" tokenise {t['tokenise']:.2f} ms, table lookups {t['lookups']:.2f}, {after};"
        f" the whole encode {t['encode']:.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--models", type=Path, default=None, help="load the active version from here")
    ap.add_argument("--device", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stages", action="store_true", help="also time one pass's stages")
    ap.add_argument("--streams", type=int, default=os.cpu_count() or 1, help="passes at once")
    args = ap.parse_args()
    devices = (
        [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    windows, now = windows_of(args.users, args.length)
    for name in devices:
        if args.models:
            enc = Encoder.load(args.models, device=name)
        else:
            torch.manual_seed(0)
            spec = discover(generate(SyntheticConfig(users=200)).events)
            tok = TokenizerConfig(features=spec, max_events=args.length)
            model = UserEncoder(tok, ModelConfig(max_events=args.length)).eval()
            enc = Encoder("random-init", model, Tokenizer(tok), torch.device(name))
        fl = flops_per_user(enc.model.cfg, min(args.length, enc.max_events))  # what it reads
        cfg = enc.model.cfg
        print(
            f"{name}: threads={torch.get_num_threads()} users={args.users} window={args.length}"
            f" model d={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads}, reads the"
            f" newest {enc.max_events} events ({enc.version}), {fl / 1e6:.1f} MFLOP/user"
        )
        paths = {"batch": enc, "reference": reference_encoder(enc)}
        if enc.device.type == "cpu":
            t0 = time.perf_counter()
            fast = copy_of(enc, compile=True)
            if fast.compiled:
                paths = {"compiled": fast, **paths}
                print(f"compiled path: compiled in {time.perf_counter() - t0:.1f} s")
            else:
                print("compiled path: not compiled (see the warning); left out")
            if cpu_bf16():
                low = {"bf16": copy_of(enc, compile=False, bf16=True)}
                if fast.compiled:
                    low = {"comp bf16": copy_of(enc, compile=True, bf16=True), **low}
                paths = {**low, **paths}
            if args.streams > 1:  # the fastest path above (compiled bf16, else compiled)
                one, best = next(iter(paths.items()))
                many = copy_of(enc, compile=best.compiled, bf16=best.bf16, streams=args.streams)
                paths = {"streams": many, **paths}
                diff = np.abs(many.encode(windows, now) - best.encode(windows, now)).max()
                print(
                    f"streams: {args.streams} passes at once, {many.threads_per_pass} torch"
                    f" thread(s) each, as {one}; largest difference from {one}'s vectors {diff}"
                )
            if cpu_bf16():
                bf = matmul_peak(enc.device, dtype=torch.bfloat16)
                a, b = low["bf16"].encode(windows, now), enc.encode(windows, now)
                cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
                print(
                    f"bf16 paths: this CPU's bf16 2048^2 matmul runs at {bf / 1e9:.0f} GFLOP/s;"
                    f" bf16 vectors against float32: lowest cosine {cos.min():.7f}"
                )
        print(
            f"{'round':>5s} {'path':9s} {'users/s':>9s} {'GFLOP/s':>8s} {'peak':>6s} {'% peak':>7s}"
        )
        ratios: dict[str, list[float]] = {
            "batch / reference": [],
            "compiled / batch": [],
            "comp bf16 / compiled": [],
            "streams / next": [],
        }
        shares: dict[str, list[float]] = {}
        for rnd in range(1, args.rounds + 1):
            r = bench(paths, windows, now, naive_n=min(len(windows), 64))
            for path in (*paths, "naive"):
                ups, peak = r[path]
                gf, pk = ups * fl / 1e9, peak / 1e9
                shares.setdefault(path, []).append(100 * gf / pk)
                print(f"{rnd:5d} {path:9s} {ups:8.1f} {gf:8.2f} {pk:8.1f} {100 * gf / pk:7.1f}%")
            ratios["batch / reference"].append(r["batch"][0] / r["reference"][0])
            if "compiled" in r:
                ratios["compiled / batch"].append(r["compiled"][0] / r["batch"][0])
            if "comp bf16" in r:
                ratios["comp bf16 / compiled"].append(r["comp bf16"][0] / r["compiled"][0])
            if "streams" in r:
                ratios["streams / next"].append(r["streams"][0] / r[list(paths)[1]][0])
        for name, rs in ratios.items():
            if rs:
                print(f"{name}, median of {len(rs)} rounds: {np.median(rs):.2f}x")
        for path, pcts in shares.items():
            print(f"{path}: median {np.median(pcts):.1f} % of the matmul over {len(pcts)} rounds")
        if args.stages:  # one pass: the first path on the caller's thread
            stages(next(e for e in paths.values() if e.threads_per_pass is None), windows, now)
        for e in paths.values():
            e.close()


if __name__ == "__main__":
    main()
