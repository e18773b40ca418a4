"""`persona train --nproc N`: the same command in N processes under torchrun.

The parent starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m
services.cli train ...`` with the same flags (settings from ``PERSONA_*`` variables pass
through the environment), waits, and returns its exit code; a Ctrl-C or SIGTERM reaches
torchrun, which stops its workers. Each worker sees ``WORLD_SIZE`` and trains its share
(`encoder/parallel.py`); rank 0 writes the version. Several machines: run the printed
``torchrun`` line on each with ``--nnodes`` and a rendezvous endpoint instead.

torchrun keeps its workers' error files in a log directory, by default a new
``torchelastic_*`` directory in the temp dir that it never removes; here it is a temporary
directory of the parent's, removed when the run ends (a failed worker's error is printed by
torchrun before it exits).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile


def child_argv(args: argparse.Namespace) -> list[str]:
    """The `persona train` flags of `args`, without --nproc."""
    out = ["train", "--events", str(args.events)] if args.events else ["train", "--synthetic"]
    out += ["--split-at", str(args.split_at), "--users", str(args.users)]
    out += ["--seed", str(args.seed), "--models", str(args.models)]
    for flag, value in (
        ("--features", args.features),
        ("--max-events", args.max_events),
        ("--epochs", args.epochs),
        ("--count-top", args.count_top),
        ("--count-hidden", getattr(args, "count_hidden", None)),
        ("--count-dims", getattr(args, "count_dims", None)),
        ("--residual", getattr(args, "residual", None)),
        ("--calibrate-crossfit", getattr(args, "calibrate_crossfit", None)),
        ("--device", args.device),
        ("--checkpoint-dir", args.checkpoint_dir),
    ):
        if value is not None:
            out += [flag, str(value)]
    out += ["--manner-bag"] if getattr(args, "manner_bag", False) else []
    out += ["--counts-in-vector"] if getattr(args, "counts_in_vector", False) else []
    return out + (["--quiet"] if args.quiet else [])


def launch(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="persona-train-") as logs:
        return _run(args, logs)


def _run(args: argparse.Namespace, logs: str) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--log-dir", logs]
    cmd += [f"--nproc-per-node={args.nproc}", "-m", "services.cli", *child_argv(args)]
    print("persona train: " + " ".join(cmd[1:]), file=sys.stderr)
    env = dict(os.environ)  # each rank its share of the cores (torchrun would say 1, loudly)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: torchrun passes the signal to its workers
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
