"""Quality on held-out synthetic users: linear probes and lookalike precision.

- Linear-probe ROC AUC for `converts` and `churns` (5-fold cross-validated logistic
  regression on standardised inputs) from the embedding, and from hand-crafted aggregate
  features: event counts per type over the last 1, 7 and 30 days, recency, distinct values of
  each string property, total events.
- Lookalike precision@10: the share of a user's 10 nearest neighbours that share its hidden
  segment (cosine for the embedding, Euclidean on standardised aggregates), and the same
  for 10 random users.

Held-out users come from the same world (``world_seed``) as training, a different ``seed``
and user-id range, and are encoded at ``end_ms`` through the serving `Encoder`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from contract.events import Event
from encoder.evaluate_log import neighbours
from encoder.synthetic import SyntheticConfig, SyntheticDataset, generate
from encoder.tokenizer import DAY, HOUR

EncodeFn = Callable[[Sequence[Sequence[Event]], int], np.ndarray]


@dataclass(frozen=True)
class EvalConfig:
    users: int = 1000
    events_per_user: float = 100.0
    seed: int = 1_000_003  # held out: not a training seed
    first_user: int = 900_000
    world: SyntheticConfig = field(default_factory=SyntheticConfig)  # world of the training set
    k: int = 10
    folds: int = 5
    max_events: int = 256


def heldout(cfg: EvalConfig) -> SyntheticDataset:
    """Held-out users: the training world (items, segments), other users."""
    return generate(
        replace(
            cfg.world,
            users=cfg.users,
            events_per_user=cfg.events_per_user,
            seed=cfg.seed,
            first_user=cfg.first_user,
        )
    )


def aggregate_features(
    windows: Sequence[Sequence[Event]], now_ms: int, types: Sequence[str]
) -> np.ndarray:
    """(B, 3 * types + P + 2): counts per type over 1/7/30 days, log recency, distinct values
    of each of the P string properties found in the windows, total events."""
    col = {t: i for i, t in enumerate(types)}
    n = len(types)
    props = sorted(
        {k for w in windows for e in w for k, v in e.props.items() if isinstance(v, str)}
    )
    pcol = {k: i for i, k in enumerate(props)}
    out = np.zeros((len(windows), 3 * n + len(props) + 2), dtype=np.float64)
    for b, w in enumerate(windows):
        seen: list[set[str]] = [set() for _ in props]
        for e in w:
            age = now_ms - e.ts_ms
            c = col.get(e.type)
            if c is not None:
                for k, span in enumerate((DAY, 7 * DAY, 30 * DAY)):
                    if age <= span:
                        out[b, k * n + c] += 1.0
            for name, v in e.props.items():
                if isinstance(v, str):
                    seen[pcol[name]].add(v)
        last = w[-1].ts_ms if w else now_ms - 60 * DAY
        out[b, 3 * n] = math.log1p(max(now_ms - last, 0) / HOUR)
        for i, s in enumerate(seen):
            out[b, 3 * n + 1 + i] = math.log1p(len(s))
        out[b, -1] = math.log1p(len(w))
    out[:, : 3 * n] = np.log1p(out[:, : 3 * n])
    return out


def probe_auc(x: np.ndarray, y: np.ndarray, folds: int, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression on standardised `x`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(y.tolist())) < 2:
        return float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    p = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def precision_at_k(x: np.ndarray, labels: np.ndarray, k: int, metric: str) -> float:
    """Mean share of each row's k nearest other rows with the same label."""
    nn = neighbours(x, k, metric)  # (B, k)
    return float((labels[nn] == labels[:, None]).mean())


def random_precision(labels: np.ndarray, k: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    n = len(labels)
    picks = rng.integers(0, n - 1, size=(n, k))
    picks = picks + (picks >= np.arange(n)[:, None])  # never the user itself
    return float((labels[picks] == labels[:, None]).mean())


def evaluate(encode: EncodeFn, cfg: EvalConfig, event_types: Sequence[str]) -> dict[str, Any]:
    """The report: embedding vs aggregate baseline vs random, on held-out users."""
    ds = heldout(cfg)
    wins = ds.windows(cfg.max_events)
    users = sorted(wins)
    windows = [wins[u] for u in users]
    now = ds.config.end_ms
    emb = encode(windows, now)
    agg = aggregate_features(windows, now, event_types)
    truth = [ds.truth[u] for u in users]
    conv = np.array([t.converts for t in truth], dtype=np.int64)
    churn = np.array([t.churns for t in truth], dtype=np.int64)
    seg = np.array([t.segment for t in truth])

    def block(x: np.ndarray, metric: str) -> dict[str, float]:
        return {
            "auc_converts": round(probe_auc(x, conv, cfg.folds), 4),
            "auc_churns": round(probe_auc(x, churn, cfg.folds), 4),
            "precision_at_10": round(precision_at_k(x, seg, cfg.k, metric), 4),
        }

    return {
        "embedding": block(emb, "cosine"),
        "aggregate_baseline": block(agg, "euclidean"),
        "random": {"precision_at_10": round(random_precision(seg, cfg.k), 4)},
        "heldout": {
            "users": len(users),
            "seed": cfg.seed,
            "world_seed": cfg.world.world_seed,
            "converts_rate": round(float(conv.mean()), 4),
            "churns_rate": round(float(churn.mean()), 4),
        },
    }


def meets_targets(report: dict[str, Any]) -> tuple[bool, list[str]]:
    """The issue's targets: beat the baseline on both AUCs, by >= 0.03 on one; p@10 >= 0.8."""
    e, a = report["embedding"], report["aggregate_baseline"]
    d_conv = e["auc_converts"] - a["auc_converts"]
    d_churn = e["auc_churns"] - a["auc_churns"]
    problems = []
    if d_conv <= 0:
        problems.append(f"converts AUC {e['auc_converts']} <= baseline {a['auc_converts']}")
    if d_churn <= 0:
        problems.append(f"churns AUC {e['auc_churns']} <= baseline {a['auc_churns']}")
    if max(d_conv, d_churn) < 0.03:
        problems.append(f"no AUC margin >= 0.03 (converts {d_conv:+.3f}, churns {d_churn:+.3f})")
    if e["precision_at_10"] < 0.8:
        problems.append(f"precision@10 {e['precision_at_10']} < 0.8")
    return not problems, problems


def format_table(report: dict[str, Any]) -> str:
    rows = [
        ("embedding", report["embedding"]),
        ("aggregate_baseline", report["aggregate_baseline"]),
        ("random", report["random"]),
    ]
    lines = [f"{'':20s} {'auc_converts':>13s} {'auc_churns':>11s} {'precision@10':>13s}"]
    for name, r in rows:

        def cell(key: str, width: int, r: dict[str, float] = r) -> str:
            return f"{r[key]:>{width}.4f}" if key in r else f"{'-':>{width}s}"

        lines.append(
            f"{name:20s} {cell('auc_converts', 13)} {cell('auc_churns', 11)} "
            f"{cell('precision_at_10', 13)}"
        )
    return "\n".join(lines)
