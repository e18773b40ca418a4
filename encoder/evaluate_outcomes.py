"""How good and how calibrated a version's outcome propensities are on a held-out split.

Order of work (`outcome_report`):

1. every user with events before the split ``T`` gets its window at ``T`` (the newest
   `window_events` events, none older than `window_ms` before its newest one, as the store
   holds them) and the version's vector of it;
2. for each horizon ``h`` with ``T + h`` inside the log, each outcome's label is "it happens
   in ``[T, T + h)``" (the version's own outcome space: its tokenizer reads the future);
3. for every (horizon, outcome) cell with at least `min_class` positives and negatives:
   ROC AUC of the calibrated probability and of a linear probe fitted on the same vectors
   (5-fold; the issue's bar: the heads within 0.01 of it), expected calibration error
   (ECE, 10 equal-width bins) before and after calibration, and the ECE's noise floor (what
   a perfectly calibrated predictor shows on these users: `propensity.ece_floor`); pooled
   over those cells, the reliability diagram (`write_reliability_png`).

The calibration was fitted on the training's validation users; this split is another
held-out set (later in time), so the ECE here is the honest one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from contract.events import Event
from encoder.evaluate_log import probe_aucs
from encoder.eventlog import EventLog, build_log
from encoder.outcomes import OutcomeSpace, occurred
from encoder.propensity import OutcomeHeads, ece_floor, reliability
from encoder.tokenizer import DAY, Tokenizer, TokenizerConfig

Source = Callable[[], Iterable[Event]]
EncodeRows = Callable[[EventLog, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def horizon_labels(
    log: EventLog, space: OutcomeSpace, users: np.ndarray, starts: np.ndarray, until: np.ndarray
) -> np.ndarray:
    """(U,) log users, (U,) first future rows, (K,) times -> (U, K, Y) labels: the outcome
    happens in the user's rows from ``starts[u]`` up to (not including) ``until[k]``."""
    out = np.zeros((len(users), len(until), space.size), dtype=bool)
    for i, u in enumerate(users):
        a, b = int(starts[i]), int(log.offsets[u + 1])
        if b <= a:
            continue
        ends = a + np.searchsorted(log.ts[a:b], until, side="left")  # (K,)
        seq = space.labels(log.static[a:b])
        out[i] = occurred(seq, np.zeros(len(until), np.int64), ends - a, space.size)
    return out


def outcome_report(
    encode_rows: EncodeRows,
    heads: OutcomeHeads,
    model_tok: TokenizerConfig,
    top: tuple[int, int],
    source: Source,
    split: int,
    window_events: int = 256,
    window_ms: int | None = 30 * DAY,
    min_class: int = 10,
    data_end_ms: int | None = None,
) -> dict[str, Any]:
    """Steps 1-3 of the module docstring. `top` is the version's (top_types, top_values);
    `data_end_ms` is where the log's future stops being observed (default: its newest event).
    """
    space = OutcomeSpace.from_spec(model_tok.features, *top)
    if space.names != heads.names:
        raise ValueError("the outcome heads do not match the version's outcome space")
    hs = np.asarray(heads.horizons_ms, dtype=np.int64)
    log = build_log(source(), Tokenizer(model_tok))
    users = np.flatnonzero(log.ts[log.offsets[:-1]] < split)
    nows = np.full(len(users), split, dtype=np.int64)
    lo, hi = log.window_bounds(users, nows, window_events, strict=True, horizon_ms=window_ms)
    z = encode_rows(log, lo, hi, nows)
    y = horizon_labels(log, space, users, hi, split + hs)  # (U, K, Y)
    end = log.end_ms if data_end_ms is None else data_end_ms
    usable = split + hs <= end  # (K,) the log covers the whole horizon
    return score_outcomes(heads, z, y, usable, min_class) | {
        "split_at_ms": split,
        "users": len(users),
        "min_class": min_class,
        "horizons_ms": list(heads.horizons_ms),
    }


def score_outcomes(
    heads: OutcomeHeads, z: np.ndarray, y: np.ndarray, usable: np.ndarray, min_class: int
) -> dict[str, Any]:
    """Step 3. z: (U, E), y: (U, K, Y), usable: (K,)."""
    from sklearn.metrics import roc_auc_score

    raw = heads.probabilities(z, calibrated=False)
    cal = heads.probabilities(z)
    pos = y.sum(0)
    cells = usable[:, None] & (pos >= min_class) & (len(z) - pos >= min_class)  # (K, Y)
    rows: list[dict[str, Any]] = []
    for k, j in zip(*np.nonzero(cells), strict=True):
        rows.append(
            {
                "outcome": heads.names[j],
                "horizon_ms": heads.horizons_ms[k],
                "positive_rate": round(float(y[:, k, j].mean()), 4),
                "auc": round(float(roc_auc_score(y[:, k, j], cal[:, k, j])), 4),
                "ece_before": reliability(raw[:, k, j], y[:, k, j])["ece"],
                "ece_after": reliability(cal[:, k, j], y[:, k, j])["ece"],
                "ece_floor": ece_floor(cal[:, k, j].astype(np.float64)),
                "calibrated": bool(heads.calibrated[k, j]),
            }
        )

    if rows:  # the bar the heads are held to: a linear probe fitted on these same vectors
        ks, js = np.nonzero(cells)
        probe = probe_aucs(z, y[:, ks, js], folds=5)  # (cells,), cross-validated
        for r, a in zip(rows, probe, strict=True):
            r["probe_auc"] = round(float(a), 4)

    def mean(key: str) -> float:
        return round(float(np.mean([r[key] for r in rows])), 4) if rows else float("nan")

    m = cells[None].repeat(len(z), 0)
    return {
        "cells": len(rows),
        "mean_auc": mean("auc"),
        "mean_probe_auc": mean("probe_auc"),
        "mean_ece_before": mean("ece_before"),
        "mean_ece_after": mean("ece_after"),
        "mean_ece_floor": mean("ece_floor"),
        "reliability_before": reliability(raw[m], y[m]),
        "reliability_after": reliability(cal[m], y[m]),
        "per_cell": rows,
    }


def format_outcome_table(report: dict[str, Any], horizons_ms: tuple[int, ...]) -> str:
    """Per horizon: cells, mean AUC of the heads and of a linear probe on the same vectors
    (cross-validated), mean ECE before and after calibration."""
    lines = [
        f"{'horizon':>8s} {'cells':>6s} {'AUC':>7s} {'probe':>7s} {'ECE raw':>8s} {'ECE cal':>8s}"
        f" {'floor':>7s}"
    ]
    keys = ("auc", "probe_auc", "ece_before", "ece_after", "ece_floor")
    for h in horizons_ms:
        rows = [r for r in report["per_cell"] if r["horizon_ms"] == h]
        if not rows:
            continue
        auc, pr, e0, e1, fl = (np.mean([r.get(k, np.nan) for r in rows]) for k in keys)
        lines.append(
            f"{_human(h):>8s} {len(rows):6d} {auc:7.4f} {pr:7.4f} {e0:8.4f} {e1:8.4f} {fl:7.4f}"
        )
    lines.append(
        f"{'all':>8s} {report['cells']:6d} {report['mean_auc']:7.4f} "
        f"{report['mean_probe_auc']:7.4f} "
        f"{report['mean_ece_before']:8.4f} {report['mean_ece_after']:8.4f} "
        f"{report.get('mean_ece_floor', float('nan')):7.4f}"
    )
    return "\n".join(lines)


def _human(ms: int) -> str:
    h = ms / 3_600_000
    return f"{h / 24:g} d" if h >= 24 else f"{h:g} h"


def write_reliability_png(report: dict[str, Any], path: Path, title: str) -> None:
    """The reliability diagram (pooled over the scored cells), before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for key, label in (("reliability_before", "raw"), ("reliability_after", "calibrated")):
        r = report[key]
        pts = np.asarray(r["bins"], dtype=np.float64).reshape(-1, 3)
        ax.plot(pts[:, 0], pts[:, 1], marker="o", label=f"{label} (ECE {r['ece']:.3f})")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
