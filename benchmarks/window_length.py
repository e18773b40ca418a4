"""Window length from measurement: quality and encode cost when the model reads the newest
64 / 128 / 256 events of a window, on an event log with a held-out time split.

    .venv/bin/python benchmarks/window_length.py --events LOG.jsonl [--split-at T]
        [--lengths 64 128 256] [--seed 0]

For each length: train on the events before the split (`persona train` defaults, the
model and the training windows reading that many events), evaluate with `persona eval`'s
protocol (mean probe AUC of embedding / aggregates / both, lookalike Jaccard), and time the
batch encoder on the evaluation windows (users/s, same run, so the lengths compare).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from encoder.api import Encoder  # noqa: E402
from encoder.evaluate_log import LogEvalConfig, auto_split, prepare, score  # noqa: E402
from encoder.eventlog import EventLog  # noqa: E402
from encoder.io import events_source  # noqa: E402
from encoder.train import TrainSpec, train  # noqa: E402


class TimedEncoder:
    """`Encoder.encode_rows`, timed."""

    def __init__(self, enc: Encoder) -> None:
        self.enc, self.seconds = enc, 0.0

    def encode_rows(
        self, log: EventLog, lo: np.ndarray, hi: np.ndarray, nows: np.ndarray
    ) -> np.ndarray:
        t = time.perf_counter()
        out = self.enc.encode_rows(log, lo, hi, nows)
        self.seconds += time.perf_counter() - t
        return out


def spec_for(length: int, seed: int) -> TrainSpec:
    s = TrainSpec()
    return replace(
        s,
        tokenizer=replace(s.tokenizer, max_events=length),
        model=replace(s.model, max_events=length),
        train=replace(s.train, train_max_events=length, seed=seed, progress=False),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=Path, required=True)
    ap.add_argument("--split-at", type=int, default=None)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = events_source(args.events)
    split = args.split_at if args.split_at is not None else auto_split(src)
    rows = []
    for length in args.lengths:
        t0 = time.perf_counter()
        model, tok, metrics, _, _ = train(src, spec_for(length, args.seed), until_ms=split)
        train_s = time.perf_counter() - t0
        timed = TimedEncoder(Encoder.from_model(model))
        data = prepare(timed.encode_rows, tok, src, LogEvalConfig(split_at=split))
        rep = score(data, LogEvalConfig(split_at=split))
        rows.append((length, rep, len(data.users) / timed.seconds, train_s, metrics["epoch_kept"]))
    print(f"log {args.events.name}, split at {split}, seed {args.seed}")
    print(
        f"{'reads':>6s} {'emb AUC':>8s} {'agg AUC':>8s} {'both':>7s} {'lookalike':>9s} "
        f"{'encode users/s':>15s} {'train s':>8s} {'epoch':>6s}"
    )
    for length, rep, ups, train_s, kept in rows:
        m = rep["mean_auc"]
        print(
            f"{length:6d} {m['embedding']:8.4f} {m['aggregates']:8.4f} {m['both']:7.4f} "
            f"{rep['lookalike_jaccard_at_k']['embedding']:9.4f} {ups:15.0f} {train_s:8.0f} "
            f"{kept:6d}"
        )


if __name__ == "__main__":
    main()
