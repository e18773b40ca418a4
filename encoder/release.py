"""Train into the registry, evaluate, validate, check parity, promote.

`promote` runs, in order, and refuses at the first failure:
1. manifest: every file of the version still has the hash it was written with;
2. parity: the serving-side batch `Encoder`, loading the version from disk, reproduces the
   parity sample's vectors (computed one window at a time at training time) within `tol`;
3. validate: on the held-out evaluation, no metric of the candidate falls more than
   `tolerance` below the active version's (skipped when nothing is active yet). The held-out
   evaluation is the candidate's own: the time split of the event file it was trained from
   (both versions encoded and probed on the same split), or held-out synthetic users for a
   synthetic model;
4. the ACTIVE pointer is replaced in one atomic step (the old one goes on the history).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.events import Event
from encoder import registry, shortterm, shortterm_fit
from encoder.api import Encoder
from encoder.evaluate import EvalConfig, evaluate, heldout
from encoder.evaluate_log import LogEvalConfig, evaluate_log
from encoder.evaluate_outcomes import outcome_report
from encoder.io import events_source
from encoder.model import UserEncoder
from encoder.parallel import Local
from encoder.tokenizer import Tokenizer
from encoder.train import EventSource, TrainSpec, train

log = logging.getLogger(__name__)

PARITY_TOL = 1e-4


@dataclass(frozen=True)
class ParityResult:
    ok: bool
    max_abs_diff: float
    windows: int
    tampered_files: tuple[str, ...]
    # the short-term head's own sample (relative |diff|; None: a version without a head)
    short_term_diff: float | None = None


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
    events: EventSource,
    spec: TrainSpec,
    models_dir: Path,
    data_end_ms: int | None = None,
    parity_n: int = 256,
    extra_metrics: dict[str, Any] | None = None,
    until_ms: int | None = None,
    eval_split: dict[str, Any] | None = None,
    parallel: Local | None = None,
    checkpoint_dir: Path | None = None,
) -> tuple[str, dict[str, Any]]:
    """Train, then write an immutable version (with its parity sample). Returns (id, metrics);
    in a multi-process run (`parallel`) only rank 0 writes, the others return ("", metrics).

    Args:
        events: a sequence, or a function opening a fresh stream (read twice).
        until_ms: train only on events before this time.
        eval_split: for a model trained from an event file with a held-out split:
            ``{"events": path, "sha256": ..., "split_at_ms": T}``; `validate` evaluates
            candidate and active version on exactly that split.
    """
    model, tok_cfg, metrics, evlog, outcomes = train(
        events, spec, data_end_ms, until_ms, parity_n, parallel, checkpoint_dir
    )
    if parallel is not None and parallel.rank != 0:
        return "", metrics
    metrics.update(extra_metrics or {})
    if eval_split is not None:
        metrics["eval_split"] = eval_split
    end = int(metrics["data_end_ms"])
    blobs: dict[str, bytes] = {}
    short_parity = ""
    if spec.train.short_term:
        t0 = time.perf_counter()
        st = shortterm_fit.fit(
            model, evlog, Tokenizer(tok_cfg), seed=spec.train.seed, window_ms=spec.train.window_ms
        )
        if st is not None:
            blobs[shortterm.FILE] = st.arrays.to_bytes()
            short_parity = st.parity
            metrics["short_term"] = {**st.report, "seconds": round(time.perf_counter() - t0, 2)}
    windows = [evlog.raw[u] for u in sorted(evlog.raw)]
    nows = [end] * len(windows)
    vectors = reference_vectors(model, windows, nows)
    texts = {
        "tokenizer.json": tok_cfg.to_json(),
        "model.json": model.cfg.to_json(),
        "train.json": json.dumps(
            {
                "objectives": asdict(spec.objectives),
                "train": asdict(spec.train),
                "spec_options": asdict(spec.spec_options),
            },
            indent=2,
            sort_keys=True,
        ),
        "metrics.json": json.dumps(metrics, indent=2, sort_keys=True),
        "outcomes.json": outcomes.to_json(),
    }
    if blobs:
        texts[shortterm.PARITY_FILE] = short_parity
    if shortterm.FILE in blobs:  # the same sample as rows, for readers without the tokenizer
        head = shortterm.ShortTermHead(
            shortterm.HeadArrays.from_bytes(blobs[shortterm.FILE]), Tokenizer(tok_cfg)
        )
        texts[shortterm.ROWS_PARITY_FILE] = shortterm.rows_parity_lines(head, short_parity)
    version = registry.write_version(
        models_dir, model.state_dict(), texts, windows, nows, vectors, blobs
    )
    return version, metrics


def parity_check(models_dir: Path, version: str, tol: float = PARITY_TOL) -> ParityResult:
    """Does the serving path, loading the version from disk, reproduce the parity sample
    (the encoder's, and the short-term head's when the version has one)?"""
    tampered = tuple(registry.verify_manifest(models_dir, version))
    head_diff: float | None = None
    if (models_dir / version / shortterm.FILE).exists():
        try:
            head = shortterm.ShortTermHead.read(models_dir, version)
            assert head is not None
            head_diff = head.parity_error(models_dir / version / shortterm.PARITY_FILE)
        except Exception as exc:  # an unreadable head fails parity, it does not crash
            log.error("parity: the short-term head of %s failed: %s", version, exc)
            head_diff = float("inf")
    try:  # a parity sample gone or unreadable is a parity failure too, not a crash
        windows, nows, expected = registry.load_parity(models_dir, version)
    except (OSError, ValueError) as exc:
        log.error("parity: the parity sample of %s cannot be read: %s", version, exc)
        return ParityResult(False, float("inf"), 0, tampered, head_diff)
    try:
        enc = Encoder.load(models_dir, version, device="cpu")
        got = enc.encode(windows, nows)
        diff = float(np.abs(got - expected).max()) if len(expected) else 0.0
    except Exception as exc:  # unreadable weights are a parity failure, not a crash
        log.error("parity: loading %s failed: %s", version, exc)
        diff = float("inf")
    head_ok = head_diff is None or head_diff <= shortterm.PARITY_TOL
    return ParityResult(
        diff <= tol and head_ok and not tampered, diff, len(windows), tampered, head_diff
    )


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# bumped when `evaluate_log` computes other numbers from the same split and config, so a
# cached report of the old method is not reused (2: windows trimmed from each user's
# newest event, as the store trims, not from the split; 3: probe AUCs averaged over
# `LogEvalConfig.repeats` cross-validation shuffles; 4: with their spread)
LOG_EVAL_METHOD = 4


def log_eval_version(
    models_dir: Path, version: str, split: dict[str, Any], cfg: LogEvalConfig | None = None
) -> dict[str, Any]:
    """`evaluate_log` of `version` on ``split`` (``{"events", "sha256", "split_at_ms"}``),
    cached in the version's ``eval_log.json``. ``leak`` says the version was trained on
    events at or after the split (its numbers are then optimistic)."""
    cfg = replace(cfg or LogEvalConfig(), split_at=int(split["split_at_ms"]))
    key = {"split": split, "config": asdict(cfg), "method": LOG_EVAL_METHOD}
    saved = registry.read_json(models_dir, version, "eval_log.json")
    if saved.get("key") == key:
        return saved
    events = Path(split["events"])
    if not events.exists():
        raise registry.RegistryError(f"evaluation log {events} not found")
    if file_sha256(events) != split["sha256"]:
        raise registry.RegistryError(f"evaluation log {events} changed since the split was made")
    enc = Encoder.load(models_dir, version)
    report = evaluate_log(enc.encode_rows, enc.tokenizer.config, events_source(events), cfg)
    until = registry.read_json(models_dir, version, "metrics.json").get("until_ms")
    report.update(key=key, model_version=version, leak=until is None or until > cfg.split_at)
    registry.add_report(models_dir, version, "eval_log.json", report)
    return report


def outcomes_eval_version(
    models_dir: Path,
    version: str,
    split: dict[str, Any] | None = None,
    cfg: EvalConfig | None = None,
) -> dict[str, Any] | None:
    """AUC and calibration of the version's outcome propensities (`evaluate_outcomes`) on
    the log split ``split`` (as `log_eval_version`), or else on held-out synthetic users
    (`cfg`) followed 14 days past their windows. None for a version without outcome heads."""
    enc = Encoder.load(models_dir, version)
    if enc.outcomes is None:
        return None
    obj = registry.read_json(models_dir, version, "train.json")["objectives"]
    top = (int(obj["top_types"]), int(obj["top_values"]))
    tok = enc.tokenizer.config
    if split is not None:
        src, at = events_source(Path(split["events"])), int(split["split_at_ms"])
        return outcome_report(enc.encode_rows, enc.outcomes, tok, top, src, at)
    ds = heldout(cfg or EvalConfig())
    events = [*ds.events, *ds.future_events]
    end = ds.config.end_ms
    return outcome_report(
        enc.encode_rows,
        enc.outcomes,
        tok,
        top,
        lambda: events,
        end + 1,
        data_end_ms=end + 1 + 14 * 86_400_000,  # the future: (end, end + 14 d]
    )


def _log_metrics(report: dict[str, Any]) -> dict[str, float]:
    return {
        "mean_auc": report["mean_auc"]["embedding"],
        "lookalike_jaccard": report["lookalike_jaccard_at_k"]["embedding"],
    }


def validate(
    models_dir: Path, candidate: str, cfg: EvalConfig, tolerance: float = 0.02
) -> dict[str, Any]:
    """Compare the candidate with the active version; ok=False on a regression > tolerance.

    A version trained from an event file with a held-out split is compared with the active
    one on that split of that file (`log_eval_version`); a synthetic one on held-out
    synthetic users; one trained from events without a split cannot be validated."""
    active = registry.active_version(models_dir)
    result: dict[str, Any] = {"candidate": candidate, "active": active, "tolerance": tolerance}
    metrics = registry.read_json(models_dir, candidate, "metrics.json")
    split = metrics.get("eval_split")
    if split is None and metrics.get("source_kind") == "events":
        result.update(
            ok=False,
            regressions=[
                "trained from events without a held-out split: nothing to validate it on "
                "(train with --split-at, or promote with --skip-validate)"
            ],
        )
        return result
    if split is not None:
        result["on"] = f"{split['events']} split at {split['split_at_ms']}"
        cand = _log_metrics(log_eval_version(models_dir, candidate, split))
    else:
        result["on"] = "held-out synthetic users"
        cand = cached_eval(models_dir, candidate, cfg)["embedding"]
    result["candidate_metrics"] = cand
    if active is None or active == candidate:
        result.update(ok=True, regressions=[])
        return result
    if split is not None:
        base_report = log_eval_version(models_dir, active, split)
        result["active_leak"] = base_report["leak"]
        base = _log_metrics(base_report)
    else:
        base = cached_eval(models_dir, active, cfg)["embedding"]
    result["active_metrics"] = base
    regressions = [
        f"{k}: {cand[k]:.4f} < {base[k]:.4f} - {tolerance}"
        for k in cand
        if k in base and cand[k] < base[k] - tolerance
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
