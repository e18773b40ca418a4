"""Training throughput: 1 process against N processes (`encoder/parallel.py`), same data.

Each side runs the same number of steps of the default model on the same synthetic log
(global batch `--batch`, no validation split), with the same total thread budget: one
process with T threads against N gloo processes with T / N threads each (on GPUs, pass
``--device cuda``: one GPU per rank, NCCL). Prints examples/s of each and the ratio; the
two sides take turns for `--rounds` rounds (the ratio of each round is what to compare on
a shared machine).

    .venv/bin/python benchmarks/train_scale.py [--nproc 2] [--users 600] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from encoder.synthetic import SyntheticConfig, generate
from encoder.train import TrainSpec, train


def _spec(args: argparse.Namespace) -> TrainSpec:
    spec = TrainSpec()
    tc = replace(
        spec.train,
        max_steps=args.steps,
        batch_size=args.batch,
        min_val_users=10**9,  # no validation split: steps only
        progress=False,
        table_optimizer="rowwise_adagrad",  # what the sharded CPU run uses
    )
    return replace(spec, train=tc)


def _rate(metrics: dict[str, Any], batch: int) -> float:
    return int(metrics["steps"]) * batch / float(metrics["train_seconds"])


def _rank(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch.distributed as dist

    from encoder.parallel import Sharded

    torch.set_num_threads(max(1, args.threads // args.nproc))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=args.nproc,
    )
    try:
        ds = generate(SyntheticConfig(users=args.users, seed=3))
        dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
        res = train(ds.events, _spec(args), ds.config.end_ms, parallel=Sharded(dev))
        if rank == 0:
            Path(out).write_text(json.dumps(res.metrics))
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch.multiprocessing as mp

    from encoder.parallel import Local

    ds = generate(SyntheticConfig(users=args.users, seed=3))
    print(
        f"{args.users} synthetic users, {args.steps} steps of {args.batch} examples, "
        f"{args.threads} threads in all, device {args.device}"
    )
    print(
        f"{'round':>5s} {'1 process ex/s':>15s} {f'{args.nproc} processes ex/s':>18s} {'ratio':>6s}"
    )
    ratios = []
    for rnd in range(1, args.rounds + 1):
        torch.set_num_threads(args.threads)
        one = train(
            ds.events, _spec(args), ds.config.end_ms, parallel=Local(torch.device(args.device))
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "metrics.json")
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(_rank, args=(port, args, out), nprocs=args.nproc, join=True)
            many = json.loads(Path(out).read_text())
        r1, rn = _rate(one.metrics, args.batch), _rate(many, args.batch)
        ratios.append(rn / r1)
        print(f"{rnd:5d} {r1:15.1f} {rn:18.1f} {rn / r1:6.2f}")
    print(f"{args.nproc} processes / 1 process, median: {np.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
