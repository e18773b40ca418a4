"""How much the synthetic world's hidden state adds to the aggregates in `persona eval`'s
probes: the ceiling of "both - aggregates" on the (renamed) synthetic log.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/truth_ceiling.py \
        [--users 2000] [--seed 0] [--models DIR [--version V]] [--repeats 5]

The log is `persona data synthetic --rename`'s (the same `--users` and `--seed` give the same
events); its future is the generator's 14 days after the split. Each user's hidden state
at the split is known here (`encoder.synthetic.UserTruth`): the segment (its tastes), the
lifecycle state (new, engaged, fading: ends in churn, slowing: recovers, churned) and the
activity (session-rate multiplier); the future is drawn from them and fresh randomness.
Beside the evaluation's aggregates, the probes read that state (one-hot segment and state,
log activity, and their products, so a linear read-out can scale a taste by a rate): no
encoder of the window can know more about the user than this, so "aggregates + truth"
bounds what "aggregates + embedding" can reach with these probes (up to what a linear
read-out of the state leaves out). With `--models` (a version trained on the same log:
`persona train --events LOG --split-at T`) the embedding is probed beside both. A
hand-made row reads what the generator plants in the sessions of a quiet spell that ends in
churn (slower clicks, shorter dwell): the last in-session gaps and numeric values. A second
table probes, among the users in a quiet spell, the state itself ("it ends in churn") from
each feature set: does the embedding see what the generator planted?
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from probe_ceiling import print_auc_table

from contract.events import Event
from encoder import datasets
from encoder.evaluate_log import (
    EncodeRows,
    EvalData,
    LogEvalConfig,
    prepare,
    probe_aucs,
    probed,
)
from encoder.eventlog import EventLog
from encoder.features import Profile, SpecOptions, spec_from_profile
from encoder.synthetic import SyntheticConfig, UserTruth, generate
from encoder.synthetic_lifecycle import RATE
from encoder.tokenizer import TokenizerConfig

STATES = tuple(RATE)  # the hidden lifecycle states: new, engaged, fading, slowing, churned


def truth_features(truth: list[UserTruth], segments: int) -> np.ndarray:
    """(U, F): one-hot segment (S) and state (5), log activity, and the products segment x
    state (S * 5), segment x log activity (S) and state x log activity (5)."""
    seg = np.eye(segments)[[t.segment for t in truth]]  # (U, S)
    state = np.eye(len(STATES))[[STATES.index(t.state) for t in truth]]  # (U, 5)
    act = np.log(np.array([t.activity for t in truth]))[:, None]  # (U, 1)
    pairs = (seg[:, :, None] * state[:, None, :]).reshape(len(truth), -1)
    return np.hstack([seg, state, act, pairs, seg * act, state * act])


def in_session(events: list[Event], users: list[str], split: int, last: int = 5) -> np.ndarray:
    """(U, 1 + numeric properties), hand-made from each user's newest 64 events before the
    split: the log mean of its last `last` gaps within a session (< 30 min), and of each
    numeric property its last `last` values' log mean (0 when none)."""
    by: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.ts_ms < split:
            by[e.user_id].append(e)
    names = sorted({k for e in events for k, v in e.props.items() if isinstance(v, float)})
    out = np.zeros((len(users), 1 + len(names)))
    for i, u in enumerate(users):
        w = by[u][-64:]
        gaps = np.diff([e.ts_ms for e in w]) / 1000.0
        gaps = gaps[gaps < 1800][-last:]
        out[i, 0] = np.log1p(gaps).mean() if len(gaps) else 0.0
        for j, k in enumerate(names):
            vals = [float(v) for e in w if isinstance(v := e.props.get(k), float)][-last:]
            out[i, 1 + j] = np.log1p(np.maximum(vals, 0.0)).mean() if vals else 0.0
    return out


def no_embedding(log: EventLog, lo: np.ndarray, hi: np.ndarray, nows: np.ndarray) -> np.ndarray:
    return np.zeros((len(lo), 1), np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--version", default=None, help="default: the active version")
    p.add_argument("--repeats", type=int, default=LogEvalConfig().repeats)
    args = p.parse_args(argv)
    scfg = SyntheticConfig(users=args.users, seed=args.seed)
    ds = generate(scfg)
    events, split = datasets.renamed_log(ds)
    cfg = replace(LogEvalConfig(), split_at=split, repeats=args.repeats)
    encode: EncodeRows
    if args.models is not None:
        from encoder import registry
        from encoder.api import Encoder

        enc = Encoder.load(args.models, registry.resolve(args.models, args.version))
        encode, tok = enc.encode_rows, enc.tokenizer.config
    else:
        hist = Profile().add_all(e for e in events if e.ts_ms < split)
        encode, tok = no_embedding, TokenizerConfig(features=spec_from_profile(hist, SpecOptions()))
    data: EvalData = prepare(encode, tok, lambda: iter(events), cfg)
    by_id = ds.truth
    tru = truth_features([by_id[u] for u in data.users], scfg.segments)
    y = data.labels[:, probed(data.labels, cfg.min_class)]
    agg, emb = data.aggregates, data.embedding
    sets = {"aggregates": agg, "truth": tru, "aggregates + truth": np.hstack([agg, tru])}
    sets["aggregates + in-session (hand-made)"] = np.hstack(
        [agg, in_session(events, data.users, split)]
    )
    if args.models is not None:
        sets |= {
            "embedding": emb,
            "aggregates + embedding": np.hstack([agg, emb]),
            "aggregates + truth + embedding": np.hstack([agg, tru, emb]),
        }
    print(f"synthetic --rename --users {args.users} --seed {args.seed}: {len(data.users)} "
          f"users, {y.shape[1]} outcomes, split {split}, {cfg.folds}-fold probes x "
          f"{cfg.repeats} shuffles")  # fmt: skip
    print_auc_table(sets, y, cfg)
    print_quiet_spells([by_id[u].state for u in data.users], sets, cfg)
    return 0


def print_quiet_spells(states: list[str], sets: dict[str, np.ndarray], cfg: LogEvalConfig) -> None:
    """Among the users in a quiet spell at the split, how well each feature set (without the
    hidden state) tells the spell that ends in churn from the one that recovers: the probe's
    AUC with the state itself as the label."""
    st = np.asarray(states)
    quiet = (st == "fading") | (st == "slowing")
    y = (st[quiet] == "fading")[:, None]
    print(f"\n{int(quiet.sum())} users in a quiet spell; probe AUC of 'it ends in churn':")
    print("\n| features | AUC |")
    print("| --- | ---: |")
    for name, x in sets.items():
        if "truth" not in name:
            auc = float(probe_aucs(x[quiet], y, cfg.folds, cfg.seed, cfg.repeats)[0])
            print(f"| {name} | {auc:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
