"""Calibrated outcome propensities: P(outcome within horizon | user vector), kept with the
version.

Training learns, from each user vector, the logit of "outcome y happens within horizon k"
(`TrainingHeads.vec_hz`, one linear map from the vector). Those logits are trained with
group weights (`OutcomeSpace.weights`: rare outcomes count as much as frequent ones), so
their raw sigmoids are not probabilities. After training, Platt scaling per (horizon,
outcome), fitted on the validation users (held out of every gradient step), maps them to
probabilities: ``p = sigmoid(a * logit + b)``. A cell with fewer than `min_class`
positives or negatives gets the scaling fitted on its horizon's cells pooled
(`fit_platt_pooled`; a real log's few validation users leave most cells there), or, when
even those are too few, keeps ``a = 1, b = 0`` and says so (``calibrated[k, y]`` false).

Shapes: B users, E vector dimensions, K horizons, Y outcomes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

MAX_SERVED = 256  # score columns a record carries at most (2 bytes each)


@dataclass(frozen=True)
class OutcomeHeads:
    """The linear outcome heads of a version with their calibration.

    Attributes:
        names: (Y,) outcome names (`OutcomeSpace.names`).
        horizons_ms: (K,) horizons.
        weight: (K*Y, E) float32, the vector temperature folded in.
        bias: (K*Y,) float32.
        a, b: (K, Y) float64 Platt slope and intercept.
        calibrated: (K, Y) bool, whether (a, b) were fitted (enough positives and negatives).
        report: what the calibration measured on the validation users (ECE before/after).
    """

    names: tuple[str, ...]
    horizons_ms: tuple[int, ...]
    weight: np.ndarray
    bias: np.ndarray
    a: np.ndarray
    b: np.ndarray
    calibrated: np.ndarray
    report: dict[str, Any]

    def logits(self, z: np.ndarray) -> np.ndarray:
        """(B, E) vectors -> (B, K, Y) raw (uncalibrated) logits."""
        k, y = len(self.horizons_ms), len(self.names)
        out = np.asarray(z, dtype=np.float32) @ self.weight.T + self.bias
        return out.reshape(-1, k, y).astype(np.float64)

    def probabilities(self, z: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """(B, E) vectors -> (B, K, Y) float32 probabilities."""
        s = self.logits(z)
        if calibrated:
            s = self.a * s + self.b
        return _sigmoid(s).astype(np.float32)

    def score_columns(self) -> list[tuple[int, int]]:
        """The (horizon, outcome) cells stored and served with each vector, outcome-major:
        `(any)` and every event type (`type=...`) at every horizon, at most `MAX_SERVED`.
        The property-value outcomes stay in the version for `persona eval` and
        `persona explain` (serving all of them would multiply the record by ~4)."""
        ys = [j for j, n in enumerate(self.names) if n == "(any)" or n.startswith("type=")]
        cells = [(k, j) for j in ys for k in range(len(self.horizons_ms))]
        return cells[:MAX_SERVED]

    def scores(self, z: np.ndarray) -> np.ndarray:
        """(B, E) vectors -> (B, S) calibrated probabilities of `score_columns`."""
        cells = self.score_columns()
        p = self.probabilities(z)  # (B, K, Y)
        ks = np.fromiter((k for k, _ in cells), np.int64, len(cells))
        ys = np.fromiter((j for _, j in cells), np.int64, len(cells))
        return p[:, ks, ys]

    def columns_json(self, audiences: str = "(any)") -> str:
        """What column i of `scores` is, as the store keeps it for serving; `audience`: the
        column is also kept in audience sets ("all", "none" or comma-separated outcomes)."""
        wanted = {a.strip() for a in audiences.split(",")}
        cols = [
            {"outcome": self.names[j], "horizon_ms": self.horizons_ms[k],
             "calibrated": bool(self.calibrated[k, j]),
             "audience": audiences == "all" or self.names[j] in wanted}
            for k, j in self.score_columns()
        ]  # fmt: skip
        return json.dumps({"columns": cols}, separators=(",", ":"))

    def to_json(self) -> str:
        return json.dumps(
            {
                "names": list(self.names),
                "horizons_ms": list(self.horizons_ms),
                "weight": self.weight.astype(np.float32).tolist(),
                "bias": self.bias.astype(np.float32).tolist(),
                "a": self.a.tolist(),
                "b": self.b.tolist(),
                "calibrated": self.calibrated.tolist(),
                "report": self.report,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> OutcomeHeads:
        d = json.loads(text)
        return cls(
            names=tuple(d["names"]),
            horizons_ms=tuple(int(h) for h in d["horizons_ms"]),
            weight=np.asarray(d["weight"], dtype=np.float32),
            bias=np.asarray(d["bias"], dtype=np.float32),
            a=np.asarray(d["a"], dtype=np.float64),
            b=np.asarray(d["b"], dtype=np.float64),
            calibrated=np.asarray(d["calibrated"], dtype=bool),
            report=d.get("report", {}),
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


def fit_platt_pooled(
    s: np.ndarray, y: np.ndarray, ok: np.ndarray, min_class: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fit_platt`, and for the cells with too few positives or negatives of their own the
    Platt scaling of their horizon's cells pooled (one slope and intercept per horizon over
    every outcome's logits: the shift and spread they share, e.g. a base rate that moved),
    where the pooled examples have enough. Small validation sets (a real log's few users)
    leave most cells to it. Returns a, b, and (K, Y) int8: 1 own fit, 2 pooled, 0 none."""
    a, b, fitted = fit_platt(s, y, ok, min_class)
    n, k, ny = s.shape
    sp = s.transpose(0, 2, 1).reshape(n * ny, k, 1)  # every outcome's logit, per horizon
    yp = y.transpose(0, 2, 1).reshape(n * ny, k, 1)
    okp = np.repeat(ok, ny, axis=0)
    pa, pb, pooled = fit_platt(sp, yp, okp, min_class)  # (K, 1)
    use = ~fitted & pooled  # (K, Y)
    how = np.where(fitted, 1, np.where(use, 2, 0)).astype(np.int8)
    return np.where(use, pa, a), np.where(use, pb, b), how


def fit_platt(
    s: np.ndarray, y: np.ndarray, ok: np.ndarray, min_class: int = 10, iters: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Platt scaling per cell: ``a, b`` minimising the log loss of ``sigmoid(a * s + b)``
    with a weak pull towards the identity, ``a >= 0`` (a ranking is never reversed: where
    the best slope is negative the cell gets its base rate, ``a = 0``). Damped Newton steps,
    all cells at once.

    Args:
        s: (N, K, Y) logits; y: (N, K, Y) 0/1 labels; ok: (N, K) usable rows.
    Returns:
        a, b: (K, Y) slope and intercept (1, 0 where not fitted); fitted: (K, Y) bool.
    """
    w = ok[..., None].astype(np.float64) * np.ones_like(s)  # (N, K, Y)
    yf = y.astype(np.float64)
    pos = (w * yf).sum(0)
    neg = (w * (1 - yf)).sum(0)
    fitted = (pos >= min_class) & (neg >= min_class)
    lam = 1e-3 * np.maximum(w.sum(0), 1.0)

    def objective(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _log_loss(a * s + b, yf, w) + 0.5 * lam * ((a - 1) ** 2 + b**2)

    a, b = np.ones(s.shape[1:]), np.zeros(s.shape[1:])
    cur = objective(a, b)
    for _ in range(iters):
        p = _sigmoid(a * s + b)
        r, v = w * (p - yf), w * p * (1 - p)
        ga, gb = (r * s).sum(0) + lam * (a - 1), r.sum(0) + lam * b
        haa, hab, hbb = (v * s * s).sum(0) + lam, (v * s).sum(0), v.sum(0) + lam
        det = np.maximum(haa * hbb - hab * hab, 1e-12)
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        step = 1.0
        for _ in range(8):  # halve where the step does not lower the objective
            na, nb = a - step * da, b - step * db
            new = objective(na, nb)
            better = new <= cur
            a, b = np.where(better, na, a), np.where(better, nb, b)
            cur = np.where(better, new, cur)
            da, db = np.where(better, 0.0, da), np.where(better, 0.0, db)
            step *= 0.5
    flip = a < 0
    a = np.where(flip, 0.0, a)
    b = np.where(flip, np.log(np.maximum(pos, 1.0) / np.maximum(neg, 1.0)), b)
    return np.where(fitted, a, 1.0), np.where(fitted, b, 0.0), fitted


def _log_loss(logit: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Summed (weighted) binary log loss per cell: (N, K, Y) -> (K, Y)."""
    return (w * (np.logaddexp(0.0, logit) - y * logit)).sum(0)


def log_loss(probs: np.ndarray, y: np.ndarray, ok: np.ndarray, cells: np.ndarray) -> float:
    """Mean log loss over the usable rows of the cells marked in `cells` (K, Y)."""
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))  # (N, K, Y)
    m = ok[..., None] & cells[None]
    return round(float(ll[m].mean()), 5) if m.any() else float("nan")


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error over equal-width bins, and the diagram's points.

    Args:
        p, y: (N,) probabilities and 0/1 labels.
    Returns:
        ``{"ece", "bins": [[mean p, observed rate, count], ...]}``.
    """
    edges = np.minimum((p * bins).astype(np.int64), bins - 1)
    n = np.bincount(edges, minlength=bins).astype(np.float64)
    mp = np.bincount(edges, weights=p, minlength=bins)
    my = np.bincount(edges, weights=y.astype(np.float64), minlength=bins)
    nz = n > 0
    gap = np.abs(mp[nz] / n[nz] - my[nz] / n[nz])
    ece = float((n[nz] * gap).sum() / max(n.sum(), 1.0))
    pts = [[mp[i] / n[i], my[i] / n[i], int(n[i])] for i in np.flatnonzero(nz)]
    return {"ece": round(ece, 5), "bins": [[round(a, 5), round(o, 5), c] for a, o, c in pts]}


def ece_floor(p: np.ndarray, bins: int = 10, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated predictor shows on this sample: mean `reliability`
    ECE of `p` (N,) against labels drawn as Bernoulli(p). ECE over N examples is biased
    upward by sampling noise alone; a measured ECE near this floor cannot be told from
    perfect calibration at this N (more held-out users lower the floor)."""
    if not len(p):
        return float("nan")
    rng = np.random.default_rng(seed)
    edges = np.minimum((p * bins).astype(np.int64), bins - 1)
    mp = np.bincount(edges, weights=p, minlength=bins)
    ys = rng.random((draws, len(p))) < p  # (R, N)
    my = np.stack([np.bincount(edges, weights=y, minlength=bins) for y in ys])  # (R, bins)
    return round(float(np.abs(my - mp).sum(1).mean() / len(p)), 5)


def cell_ece(probs: np.ndarray, y: np.ndarray, ok: np.ndarray, cells: np.ndarray) -> float:
    """Mean ECE over the cells marked in `cells` (K, Y); probs, y: (N, K, Y), ok: (N, K)."""
    out = [
        reliability(probs[ok[:, k], k, j], y[ok[:, k], k, j])["ece"]
        for k, j in zip(*np.nonzero(cells), strict=True)
    ]
    return round(float(np.mean(out)), 5) if out else float("nan")


def refit(
    z: np.ndarray, y: np.ndarray, ok: np.ndarray, l2: float = 1e-3, iters: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Linear heads refitted on frozen vectors: one L2-regularised logistic regression per
    (horizon, outcome), all cells at once (L-BFGS), every example weighted alike.

    Training learns the heads with group weights (rare outcomes count as much as frequent
    ones, which helps the encoder learn them) and from examples of every cut time mixed with
    the other objectives; read out by `persona eval` on held-out users, those heads trailed a
    linear probe fitted on the same vectors by ~0.04 AUC. Refitted here on the final
    vectors of training examples, the heads are that probe, and their raw probabilities are
    nearly calibrated before Platt scaling.

    Args:
        z: (N, E) vectors; y: (N, K, Y) 0/1 labels; ok: (N, K) usable rows.
    Returns:
        weight (K*Y, E) float32, bias (K*Y,) float32, in `OutcomeHeads` order.
    """
    import torch

    n, k, ny = y.shape
    mu, sd = z.mean(0), z.std(0) + 1e-6  # standardised inside, folded back after
    x = torch.from_numpy((z - mu) / sd).double()  # (N, E)
    t = torch.from_numpy(y.reshape(n, k * ny).astype(np.float64))  # (N, C)
    m = torch.from_numpy(np.repeat(ok, ny, axis=1).astype(np.float64))  # (N, C)
    rows = m.sum(0).clamp(min=1.0)  # (C,)
    pos = (t * m).sum(0)
    w = torch.zeros(k * ny, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.logit(((pos + 0.5) / (rows + 1.0)).clamp(1e-6, 1 - 1e-6)).requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ w.T + b  # (N, C)
        nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none")
        loss = ((nll * m).sum(0) / rows).sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    wf = w.detach().numpy() / sd  # (C, E): x = (z - mu) / sd
    bf = b.detach().numpy() - wf @ mu
    return wf.astype(np.float32), bf.astype(np.float32)


def calibrate(
    names: tuple[str, ...],
    horizons_ms: tuple[int, ...],
    weight: np.ndarray,
    bias: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    ok: np.ndarray,
    min_class: int = 10,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> OutcomeHeads:
    """Fit the calibration of linear heads ``(weight, bias)`` on held-out vectors.

    Args:
        z: (N, E) held-out user vectors; y: (N, K, Y) labels; ok: (N, K) usable labels.
        extra: more calibration examples scored elsewhere: logits (M, K, Y) of heads that
            never saw them (cross-fitted), labels (M, K, Y), usable (M, K). The report's
            ECE stays measured on `z` alone.
    """
    raw = OutcomeHeads(
        names,
        horizons_ms,
        weight.astype(np.float32),
        bias.astype(np.float32),
        np.ones((len(horizons_ms), len(names))),
        np.zeros((len(horizons_ms), len(names))),
        np.zeros((len(horizons_ms), len(names)), dtype=bool),
        {},
    )
    if len(z) == 0:
        return replace(raw, report={"examples": 0})
    s, yy, oo = raw.logits(z), y, ok
    if extra is not None and len(extra[0]):
        s, yy, oo = (np.concatenate([a, b]) for a, b in zip((s, y, ok), extra, strict=True))
    a, b, how = fit_platt_pooled(s, yy, oo, min_class)
    fitted = how == 1
    out = replace(raw, a=a, b=b, calibrated=how > 0)
    before, after = raw.probabilities(z, calibrated=False), out.probabilities(z)
    report = {
        "examples": len(z),
        "extra_examples": 0 if extra is None else len(extra[0]),
        "cells": int(fitted.size),
        "cells_calibrated": int(fitted.sum()),
        "cells_pooled": int((how == 2).sum()),
        "ece_before": cell_ece(before, y, ok, fitted),
        "ece_after": cell_ece(after, y, ok, fitted),
        "log_loss_before": log_loss(before, y, ok, fitted),
        "log_loss_after": log_loss(after, y, ok, fitted),
        "min_class": min_class,
    }
    return replace(out, report=report)
