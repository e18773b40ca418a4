"""`persona train`'s options: the training spec its flags make, and `--choose` (which flags
it refuses, the choice run before the training: `encoder/choose.py`). torch and the encoder
load inside the functions, as in the other encoder commands."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

log = logging.getLogger("persona.encoder")


def spec_from_args(args: argparse.Namespace) -> Any:
    """The TrainSpec of the flags: the defaults with what they set."""
    from dataclasses import replace

    from encoder.features import FeaturesFile
    from encoder.train import TrainSpec

    spec = TrainSpec()
    tc = replace(spec.train, seed=args.seed, progress=not args.quiet)
    if args.epochs is not None:
        tc = replace(tc, epochs=args.epochs)
    spec = replace(spec, train=tc)
    if args.max_events is not None:
        m = args.max_events
        spec = replace(
            spec,
            tokenizer=replace(spec.tokenizer, max_events=m),
            model=replace(spec.model, max_events=m),
            train=replace(spec.train, train_max_events=m),
        )
    if args.features is not None:
        spec = replace(spec, features_file=FeaturesFile.load(args.features))
    if args.count_top is not None:
        spec = replace(spec, model=replace(spec.model, count_top=args.count_top))
    if getattr(args, "count_hidden", None) is not None:
        if not spec.model.count_top or args.count_hidden < 0:
            raise SystemExit("persona train: --count-hidden N (N >= 0) needs --count-top N (N > 0)")
        spec = replace(spec, model=replace(spec.model, count_hidden=args.count_hidden))
    if getattr(args, "manner_bag", False):
        spec = replace(spec, model=replace(spec.model, manner_bag=True))
    if getattr(args, "calibrate_crossfit", None) is not None:
        spec = replace(spec, train=replace(spec.train, calibrate_crossfit=args.calibrate_crossfit))
    return spec


def choose_refused(args: argparse.Namespace) -> str | None:
    """Why `--choose` cannot run with these flags (None: it can, or was not asked)."""
    if not getattr(args, "choose", False):
        return None
    if not args.events:
        return "--choose needs --events (the synthetic world has its own evaluation)"
    flags = (
        ("--count-top", args.count_top),
        ("--count-hidden", getattr(args, "count_hidden", None)),
        ("--max-events", args.max_events),
    )
    pinned = [flag for flag, value in flags if value is not None]
    if pinned:
        return f"--choose measures its own candidates; drop {' '.join(pinned)}"
    if args.nproc > 1:
        return "--choose trains its candidates in one process; drop --nproc"
    return None


def choose(source: Any, spec: Any, split: int | None) -> tuple[Any, dict[str, Any]] | None:
    """(the chosen candidate's TrainSpec, the choice's report), or None after logging why
    the events allow no choice."""
    from encoder import choose as choosing

    print("choosing among the candidates on an earlier cut of the training events ...",
          file=sys.stderr)  # fmt: skip
    try:
        chosen, report = choosing.choose(source, choosing.candidates(spec), split)
    except ValueError as exc:
        log.error("%s", exc)
        return None
    print(f"chose {chosen.name} ({choice_line(report)})", file=sys.stderr)
    return chosen.spec, report


def choice_line(report: dict[str, Any]) -> str:
    """The choice's scores in a line: each candidate's mean AUC of embedding + aggregates."""
    parts = [
        f"{name}: {r['both']:.4f}" if "both" in r else f"{name}: skipped ({r['skipped']})"
        for name, r in report["candidates"].items()
    ]
    cut = report["cut_at_ms"]
    return f"mean AUC of embedding + aggregates at the cut {cut}: " + ", ".join(parts)
