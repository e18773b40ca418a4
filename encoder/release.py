"""Train into the registry, evaluate, validate, check parity, promote.

`promote` runs, in order, and refuses at the first failure:
1. manifest: every file of the version still has the hash it was written with;
2. parity: the serving-side batch `Encoder`, loading the version from disk, reproduces the
   parity sample's vectors (computed one window at a time at training time) within `tol`;
3. validate: on the held-out evaluation, no metric of the candidate falls more than
   `tolerance` below the active version's (skipped when nothing is active yet);
4. the ACTIVE pointer is replaced in one atomic step (the old one goes on the history).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.events import Event
from encoder import registry
from encoder.api import Encoder
from encoder.evaluate import EvalConfig, evaluate
from encoder.model import UserEncoder
from encoder.tokenizer import Tokenizer
from encoder.train import TrainSpec, group_by_user, train

log = logging.getLogger(__name__)

PARITY_TOL = 1e-4


@dataclass(frozen=True)
class ParityResult:
    ok: bool
    max_abs_diff: float
    windows: int
    tampered_files: tuple[str, ...]


def reference_vectors(
    model: UserEncoder, windows: Sequence[Sequence[Event]], nows: Sequence[int]
) -> np.ndarray:
    """The plain reference: one window at a time, no bucketing. (P, E) float32."""
    tok = Tokenizer(model.tok)
    out = []
    with torch.inference_mode():
        for w, now in zip(windows, nows, strict=True):
            out.append(model.encode_batch(tok.encode([w], now)).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.out_dim), np.float32)


def train_version(
    events: Sequence[Event],
    spec: TrainSpec,
    models_dir: Path,
    data_end_ms: int | None = None,
    parity_n: int = 256,
    extra_metrics: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Train, then write an immutable version (with its parity sample). Returns (id, metrics)."""
    model, tok_cfg, metrics = train(events, spec, data_end_ms)
    metrics.update(extra_metrics or {})
    users = group_by_user(events)
    end = int(metrics["data_end_ms"])
    picked = list(users)[:parity_n]
    windows = [users[u][-tok_cfg.max_events :] for u in picked]
    nows = [end] * len(windows)
    vectors = reference_vectors(model, windows, nows)
    texts = {
        "tokenizer.json": tok_cfg.to_json(),
        "model.json": model.cfg.to_json(),
        "train.json": json.dumps(
            {"objectives": asdict(spec.objectives), "train": asdict(spec.train)},
            indent=2,
            sort_keys=True,
        ),
        "metrics.json": json.dumps(metrics, indent=2, sort_keys=True),
    }
    version = registry.write_version(models_dir, model.state_dict(), texts, windows, nows, vectors)
    return version, metrics


def parity_check(models_dir: Path, version: str, tol: float = PARITY_TOL) -> ParityResult:
    """Does the serving path, loading the version from disk, reproduce the parity sample?"""
    tampered = tuple(registry.verify_manifest(models_dir, version))
    windows, nows, expected = registry.load_parity(models_dir, version)
    try:
        enc = Encoder.load(models_dir, version, device="cpu")
        got = enc.encode(windows, nows)
        diff = float(np.abs(got - expected).max()) if len(expected) else 0.0
    except Exception as exc:  # unreadable weights are a parity failure, not a crash
        log.error("parity: loading %s failed: %s", version, exc)
        diff = float("inf")
    return ParityResult(diff <= tol and not tampered, diff, len(windows), tampered)


def eval_version(
    models_dir: Path, version: str, cfg: EvalConfig, save: bool = True
) -> dict[str, Any]:
    enc = Encoder.load(models_dir, version)
    report = evaluate(enc.encode, cfg, enc.tokenizer.config.event_types)
    report["model_version"] = version
    report["eval_config"] = asdict(cfg)
    if save:
        registry.add_report(models_dir, version, "eval.json", report)
    return report


def cached_eval(models_dir: Path, version: str, cfg: EvalConfig) -> dict[str, Any]:
    """The version's saved eval.json when it was made with `cfg`, else a fresh evaluation."""
    saved = registry.read_json(models_dir, version, "eval.json")
    if saved.get("eval_config") == asdict(cfg):
        return saved
    return eval_version(models_dir, version, cfg)


def validate(
    models_dir: Path, candidate: str, cfg: EvalConfig, tolerance: float = 0.02
) -> dict[str, Any]:
    """Compare the candidate with the active version; ok=False on a regression > tolerance."""
    active = registry.active_version(models_dir)
    cand = cached_eval(models_dir, candidate, cfg)
    result: dict[str, Any] = {"candidate": candidate, "active": active, "tolerance": tolerance}
    result["candidate_metrics"] = cand["embedding"]
    if active is None or active == candidate:
        result.update(ok=True, regressions=[])
        return result
    base = cached_eval(models_dir, active, cfg)
    result["active_metrics"] = base["embedding"]
    regressions = [
        f"{k}: {cand['embedding'][k]:.4f} < {base['embedding'][k]:.4f} - {tolerance}"
        for k in ("auc_converts", "auc_churns", "precision_at_10")
        if cand["embedding"][k] < base["embedding"][k] - tolerance
    ]
    result.update(ok=not regressions, regressions=regressions)
    return result


def promote(
    models_dir: Path,
    version: str,
    cfg: EvalConfig,
    tolerance: float = 0.02,
    skip_validate: bool = False,
) -> dict[str, Any]:
    """Steps 1-4 of the module docstring. Returns a report; ok=False means nothing changed."""
    registry.resolve(models_dir, version)
    parity = parity_check(models_dir, version)
    report: dict[str, Any] = {"version": version, "parity": asdict(parity)}
    if not parity.ok:
        report.update(
            ok=False,
            reason=f"parity failed (max |diff| {parity.max_abs_diff:.3g}, "
            f"tampered files {list(parity.tampered_files)})",
        )
        return report
    if not skip_validate:
        val = validate(models_dir, version, cfg, tolerance)
        report["validate"] = val
        if not val["ok"]:
            report.update(
                ok=False, reason="validation regressions: " + "; ".join(val["regressions"])
            )
            return report
    report["previous"] = registry.set_active(models_dir, version)
    report["ok"] = True
    return report
