"""Peak memory of the file paths on a large event log: `persona encode` and training's data
passes (profile, tokenize, windows, a few steps) stream the file, so memory follows the
token arrays (~60 bytes an event), not the file.

    .venv/bin/python benchmarks/stream_memory.py [--events 5000000] [--keep DIR]

Writes a synthetic JSON-lines log of about `--events` events (once, into --keep or a temp
folder), trains a small model on its first 100k events (the model under test), then runs,
each in a fresh process, (1) `persona encode` over the whole file and (2) training on the
whole file capped at 20 steps, and prints each one's peak RSS (ru_maxrss of the child)
beside the file size. The target: under 3 GB for 5M events.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from encoder.io import iter_events, write_events_jsonl  # noqa: E402
from encoder.synthetic import SyntheticConfig, generate  # noqa: E402

TRAIN = """
import sys
from dataclasses import replace
from encoder.io import events_source
from encoder.train import TrainSpec, train
spec = TrainSpec()
spec = replace(spec, train=replace(spec.train, max_steps=20, progress=False))
model, tok, metrics, log, _ = train(events_source(sys.argv[1]), spec)
print(metrics["events"], metrics["users"], metrics["steps"])
"""


def write_log(path: Path, events: int) -> None:
    """About `events` synthetic events (100 a user), generated 5,000 users at a time."""
    per_user = 100
    users = max(1, events // per_user)
    chunk = 5_000
    with path.open("w") as f:
        for start in range(0, users, chunk):
            cfg = SyntheticConfig(
                users=min(chunk, users - start),
                events_per_user=per_user,
                seed=start,
                first_user=start,
            )
            for e in generate(cfg).events:
                f.write(json.dumps(e.to_json_dict()))
                f.write("\n")


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """Peak RSS of exactly this command: measured inside a wrapper process of its own."""
    code = (
        "import resource, subprocess, sys, time; t0 = time.perf_counter(); "
        "o = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "time.perf_counter() - t0, (o.stdout.strip().splitlines() or [''])[-1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split(maxsplit=2)
    return int(out[0]) / 1024, float(out[1]), out[2] if len(out) > 2 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the log in")
    args = ap.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    folder = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events-{args.events}.jsonl"
    try:
        if not path.exists():
            t0 = time.perf_counter()
            write_log(path, args.events)
            print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        with path.open() as f:
            n = sum(1 for _ in f)
        size_mb = path.stat().st_size / 2**20
        small = folder / "small.jsonl"
        write_events_jsonl(small, itertools.islice(iter_events(path), 100_000))
        models = folder / "models"
        persona = [sys.executable, "-m", "services.cli"]
        env_cmd = [
            *persona,
            "train",
            "--events",
            str(small),
            "--split-at",
            "none",
            "--models",
            str(models),
            "--quiet",
            "--epochs",
            "1",
        ]
        subprocess.run(env_cmd, check=True, cwd=ROOT, capture_output=True)
        rows = []
        enc_cmd = [
            *persona,
            "encode",
            "--events",
            str(path),
            "--out",
            str(folder / "v.parquet"),
            "--models",
            str(models),
        ]
        rows.append(("persona encode (whole file)", *measured(enc_cmd)))
        rows.append(
            ("training data passes + 20 steps", *measured([sys.executable, "-c", TRAIN, str(path)]))
        )
        print(f"log: {n:,} events, {size_mb:,.0f} MiB of JSON lines")
        print(f"{'run':34s} {'peak RSS MiB':>13s} {'seconds':>8s}  output")
        for name, rss, secs, last in rows:
            print(f"{name:34s} {rss:13,.0f} {secs:8.0f}  {last}")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
