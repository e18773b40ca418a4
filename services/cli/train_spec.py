"""`persona train`'s model and objective options: the flags (`add_model_flags`) and the
`TrainSpec` they make (`train_spec`)."""

from __future__ import annotations

import argparse
from typing import Any


def train_spec(args: argparse.Namespace) -> Any:
    """The `TrainSpec` of `persona train`'s flags (the defaults where a flag is absent)."""
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
        if args.count_top < 0:
            raise SystemExit("persona train: --count-top N needs N >= 0")
        spec = replace(spec, model=replace(spec.model, count_top=args.count_top))
    if getattr(args, "counts_in_vector", False):
        if not spec.model.count_top:
            raise SystemExit("persona train: --counts-in-vector needs --count-top N (N > 0)")
        spec = replace(spec, model=replace(spec.model, counts_in_vector=True))
    if getattr(args, "residual", None) is not None:
        if args.residual < 0:
            raise SystemExit("persona train: --residual W needs W >= 0")
        spec = replace(spec, objectives=replace(spec.objectives, w_residual=args.residual))
    if getattr(args, "count_hidden", None) is not None:
        if not spec.model.count_top or args.count_hidden < 0:
            raise SystemExit("persona train: --count-hidden N (N >= 0) needs --count-top N (N > 0)")
        spec = replace(spec, model=replace(spec.model, count_hidden=args.count_hidden))
    if getattr(args, "count_dims", None) is not None:
        n = args.count_dims
        if n < 0 or n >= spec.model.out_dim or (n and not spec.model.count_top):
            raise SystemExit(
                f"persona train: --count-dims N needs 0 <= N < {spec.model.out_dim} "
                "(and --count-top N > 0 when N > 0)"
            )
        spec = replace(spec, model=replace(spec.model, count_dims=n))
    if getattr(args, "manner_bag", False):
        spec = replace(spec, model=replace(spec.model, manner_bag=True))
    if getattr(args, "calibrate_crossfit", None) is not None:
        spec = replace(spec, train=replace(spec.train, calibrate_crossfit=args.calibrate_crossfit))
    return spec


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-events",
        type=int,
        default=None,
        help="newest events of a window the model reads (default 64)",
    )
    p.add_argument(
        "--count-top",
        type=int,
        default=None,
        help="log counts of the top N types and values of each categorical property, "
        "which the residual objective sets the vector beside (ModelConfig.count_top; "
        "default 16; 0: no counts and no residual objective)",
    )
    p.add_argument(
        "--counts-in-vector",
        action="store_true",
        help="the vector also reads those counts itself (ModelConfig.counts_in_vector; "
        "see README, Instacart against MovieLens)",
    )
    p.add_argument(
        "--count-hidden",
        type=int,
        default=None,
        help="the counts also pass through an MLP of this width (ModelConfig.count_hidden; "
        "default 0: off; see README, Instacart)",
    )
    p.add_argument(
        "--count-dims",
        type=int,
        default=None,
        metavar="N",
        help="the vector's last N components are the counts' own summary, trained only to "
        "predict the horizon targets (ModelConfig.count_dims; see README)",
    )
    p.add_argument(
        "--residual",
        type=float,
        default=None,
        metavar="W",
        help="weight of the residual objective: the vector's horizon targets predicted "
        "beside the counts (ObjectiveConfig.w_residual; default 3; 0: off)",
    )
    p.add_argument(
        "--manner-bag",
        action="store_true",
        help="the vector also reads the window's mean of each event's numeric-bin, gap and "
        "age embeddings (ModelConfig.manner_bag; see README)",
    )
    p.add_argument(
        "--calibrate-crossfit",
        type=int,
        default=None,
        metavar="FOLDS",
        help="the outcome heads' calibration also sees training users, scored by heads "
        "refitted without their fold (TrainConfig.calibrate_crossfit; default 5, 0: off)",
    )
