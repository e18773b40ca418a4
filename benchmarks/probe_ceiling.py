"""What else a linear probe can read from the evaluation's windows: a yardstick for the
"both - aggregates" target of `persona eval` on a log.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/probe_ceiling.py --models DIR \
        [--version V] [--repeats 5]

For a version trained on a log (`persona train --events LOG --split-at T`): `persona eval`'s
own windows, outcomes and probes (`encoder/evaluate_log.py`), and beside the aggregates two
hand-made extras of the same windows that the aggregates leave out:

- bag: TF-IDF of every categorical value and event type in the window, reduced to 64
  dimensions (truncated SVD): which users a user resembles, learnt from nothing but the
  windows (the aggregates count only the outcomes' own values);
- habits: per outcome value, the share of the window's distinct timestamps (orders,
  sessions) that hold it, and the hours from its last occurrence to the split.

It prints the mean probe AUC of the aggregates, the embedding, both, and the aggregates with
each extra and with both extras (with and without the embedding). If hand-made extras add
as little as the embedding does, the log holds little that a linear read-out of these
windows finds beyond the aggregates; if they add more, the encoder misses it.
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
from scipy.sparse import csr_matrix

from contract.events import Event
from encoder import registry
from encoder.api import Encoder
from encoder.evaluate_log import EvalData, LogEvalConfig, prepare, probe_aucs, probed
from encoder.eventlog import EventLog
from encoder.io import events_source
from encoder.tokenizer import HOUR

Window = list[tuple[int, list[str]]]  # (ts_ms, ["type=...", "prop=value", ...]) oldest first


def windows(path: Path, users: list[str], cfg: LogEvalConfig) -> dict[str, Window]:
    """Each user's events before the split, trimmed by the evaluation's own rule (the newest
    `window_events`, none older than `window_ms` before the user's newest one); an event
    becomes its type and its categorical (string) values."""
    split = int(cfg.split_at or 0)
    wanted = set(users)
    seen: dict[str, Window] = defaultdict(list)
    e: Event
    for e in events_source(path)():
        if e.ts_ms < split and e.user_id in wanted:
            vals = [f"type={e.type}"] + [
                f"{k}={v}" for k, v in e.props.items() if isinstance(v, str)
            ]
            seen[e.user_id].append((e.ts_ms, vals))
    users = list(seen)
    for evs in seen.values():
        evs.sort(key=lambda x: x[0])  # stable: equal times keep the file's order
    # the trim is the evaluation's own (`EventLog.window_bounds`), on these times alone
    sizes = [len(seen[u]) for u in users]
    log = EventLog(
        users=users,
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        ts=np.asarray([ts for u in users for ts, _ in seen[u]], dtype=np.int64),
        static=np.zeros((sum(sizes), 0), dtype=np.int32),
        numbers=np.zeros((sum(sizes), 0), dtype=np.float32),
    )
    idx = np.arange(len(users))
    lo, hi = log.window_bounds(
        idx, np.full(len(users), split), cfg.window_events, strict=True, horizon_ms=cfg.window_ms
    )
    first = log.offsets[:-1]
    return {u: seen[u][int(lo[i] - first[i]) : int(hi[i] - first[i])] for i, u in enumerate(users)}


def bag_svd(wins: list[Window], dims: int = 64) -> np.ndarray:
    """(U, dims) truncated SVD of the windows' TF-IDF value bags."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, w in enumerate(wins):
        for _, vals in w:
            for v in vals:
                rows.append(i)
                cols.append(vocab.setdefault(v, len(vocab)))
    x = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(wins), max(len(vocab), 1)))
    x.sum_duplicates()
    k = max(1, min(dims, x.shape[1] - 1))
    tfidf = TfidfTransformer().fit_transform(x)
    return np.asarray(TruncatedSVD(k, random_state=0).fit_transform(tfidf))


def habits(wins: list[Window], outcomes: list[str], split: int) -> np.ndarray:
    """(U, 2 * outcomes with a value): share of distinct timestamps holding the value, and
    log hours from its last occurrence to the split (a month and more when never)."""
    never = np.log1p(30 * 24.0)
    named = [o for o in outcomes if "=" in o]
    out = np.zeros((len(wins), 2 * len(named)))
    for i, w in enumerate(wins):
        times = len({ts for ts, _ in w}) or 1
        for j, o in enumerate(named):
            hit = [ts for ts, vals in w if o in vals]
            out[i, 2 * j] = len(set(hit)) / times
            out[i, 2 * j + 1] = np.log1p((split - max(hit)) / HOUR) if hit else never
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--version", default=None, help="default: the active version")
    p.add_argument("--repeats", type=int, default=LogEvalConfig().repeats)
    args = p.parse_args(argv)
    version = registry.resolve(args.models, args.version)
    split = registry.read_json(args.models, version, "metrics.json").get("eval_split")
    if split is None:
        p.error(f"{version} records no split: train it with --events LOG --split-at T")
    path = Path(split["events"])
    cfg = replace(LogEvalConfig(), split_at=int(split["split_at_ms"]), repeats=args.repeats)
    enc = Encoder.load(args.models, version)
    data: EvalData = prepare(enc.encode_rows, enc.tokenizer.config, events_source(path), cfg)
    n = len(data.users)
    keep = probed(data.labels, cfg.min_class)
    y = data.labels[:, keep]
    outcomes = [o for o, k in zip(data.outcomes, keep, strict=True) if k]
    by_user = windows(path, data.users, cfg)
    wins = [by_user.get(u, []) for u in data.users]
    agg, emb = data.aggregates, data.embedding
    bag, hab = bag_svd(wins), habits(wins, outcomes, int(cfg.split_at or 0))
    sets = {
        "aggregates": agg,
        "embedding": emb,
        "aggregates + embedding": np.hstack([agg, emb]),
        "bag": bag,
        "aggregates + bag": np.hstack([agg, bag]),
        "aggregates + habits": np.hstack([agg, hab]),
        "aggregates + bag + habits": np.hstack([agg, bag, hab]),
        "aggregates + bag + habits + embedding": np.hstack([agg, bag, hab, emb]),
    }
    print(f"{version}: {n} users, {len(outcomes)} outcomes, split {cfg.split_at}, "
          f"{cfg.folds}-fold probes x {cfg.repeats} shuffles")  # fmt: skip
    print_auc_table(sets, y, cfg)
    return 0


def print_auc_table(sets: dict[str, np.ndarray], y: np.ndarray, cfg: LogEvalConfig) -> None:
    """The mean probe AUC of each feature set for the outcomes `y` (U, Y), as a Markdown
    table; the first set is the base of the "- aggregates" column."""
    print("\n| features | mean probe AUC | - aggregates |")
    print("| --- | ---: | ---: |")
    base = None
    for name, x in sets.items():
        auc = float(np.nanmean(probe_aucs(x, y, cfg.folds, cfg.seed, cfg.repeats)))
        base = auc if base is None else base
        print(f"| {name} | {auc:.4f} | {auc - base:+.4f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
