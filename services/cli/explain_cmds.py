"""`persona explain USER --events FILE`: what moved a user's outcome probabilities.

Reads the file once (the version's event log, and the user's own events beside it), then
runs `encoder/explain.py`'s steps: the user's probabilities after each of the newest events,
the events that moved each outcome most, and the nearest users at the largest shift (or
``--at``), split into those who went on to the outcome and those who did not. Prints a table
(``--json``: the report as JSON instead); ``--png`` draws the trajectory. An unknown user,
outcome or horizon is a usage error (exit 2). torch is imported inside the command.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

from services.cli.encoder_cmds import guarded, quiet_runtime
from services.config import add_models_arg

_UNITS = {"h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_horizon(text: str) -> int | None:
    """``1h`` / ``1d`` / ``3d`` / ``1w`` / ``2w`` / ``14d`` or milliseconds -> ms (None: not
    a duration)."""
    m = re.fullmatch(r"\s*(\d+)\s*([hdw]?)\s*", text.lower())
    if m is None:
        return None
    return int(m.group(1)) * _UNITS.get(m.group(2), 1)


def _usage(msg: str) -> int:
    print(f"persona explain: {msg}", file=sys.stderr)
    return 2


def cmd_explain(args: argparse.Namespace) -> int:
    quiet_runtime()
    from encoder import registry
    from encoder.api import Encoder
    from encoder.eventlog import build_log
    from encoder.explain import (
        human_ms,
        nearest,
        population,
        report,
        top_moves,
        trajectory,
        user_history,
    )
    from encoder.io import iter_events
    from encoder.outcomes import OutcomeSpace

    enc = Encoder.load(args.models, args.model, args.device)
    heads = enc.outcomes
    if heads is None:
        return _usage(f"model {enc.version} has no outcome heads (train a newer version)")
    horizon = None if args.horizon is None else parse_horizon(args.horizon)
    if args.horizon is not None and horizon not in heads.horizons_ms:
        have = ", ".join(human_ms(h) for h in heads.horizons_ms)
        return _usage(f"no horizon {args.horizon!r} in model {enc.version} (it has {have})")
    for name in args.outcome or ():
        if name not in heads.names:
            near = difflib.get_close_matches(name, heads.names, n=3)
            hint = f"; close: {', '.join(near)}" if near else ""
            return _usage(
                f"no outcome {name!r} in model {enc.version} (`persona model show` lists "
                f"them{hint})"
            )
    mine: list[Any] = []

    def stream() -> Any:
        for e in iter_events(args.events):
            if e.user_id == args.user:
                mine.append(e)
            yield e

    try:
        evlog = build_log(stream(), enc.tokenizer)
    except (OSError, ValueError) as exc:
        return _usage(str(exc))
    now = args.now_ms if args.now_ms is not None else evlog.end_ms
    history = [e for e in user_history(mine) if e.ts_ms <= now]
    if not history:
        return _usage(f"user {args.user!r} has no events in {args.events} at or before {now}")
    traj = trajectory(enc, args.user, history, args.shown)
    first = traj.outcome_index(args.outcome[0]) if args.outcome else 0
    k = traj.moved_most(first) if horizon is None else traj.horizon_index(horizon)
    horizon = traj.horizons_ms[k]
    if args.outcome:
        cells = [traj.outcome_index(n) for n in args.outcome]
    else:  # (any), then the outcomes whose largest single shift is largest
        moved = abs(traj.deltas()[:, k, :]).max(0)  # (Y,)
        others = [int(j) for j in (-moved).argsort(kind="stable") if j != 0]
        cells = [0, *others[: max(args.outcomes - 1, 0)]]
    moves = {j: top_moves(traj, k, j, args.top) for j in cells}
    at = traj.largest_shift(k, cells[0]) if args.at is None else args.at
    if not 0 <= at < len(traj.events):
        return _usage(f"--at {at}: the user has {len(traj.events)} shown events (0 ... last)")
    neigh = None
    outcome = traj.names[cells[0]]
    if args.neighbours > 0:
        obj = registry.read_json(args.models, enc.version, "train.json").get("objectives", {})
        top = (int(obj.get("top_types", 32)), int(obj.get("top_values", 16)))
        space = OutcomeSpace.from_spec(enc.tokenizer.config.features, *top)
        if space.names != heads.names:
            return _usage(f"model {enc.version}: its outcome heads do not match its outcome space")
        pop = population(
            enc, evlog, space, traj.events[at].ts_ms, horizon, outcome, exclude=[args.user]
        )
        neigh = nearest(traj.vectors[at], pop, at, args.neighbours)
    rep = report(traj, k, cells, moves, neigh, outcome) | {"model": enc.version}
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        from encoder.explain import format_report

        print(f"model {enc.version}")
        print(format_report(rep))
    if args.png is not None:
        from encoder.explain import write_trajectory_png

        write_trajectory_png(rep, args.png, f"{enc.version}: what moved {args.user}")
        print(f"trajectory: {args.png}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "explain",
        help="what moved a user: outcome probabilities event by event, the events that "
        "moved them, the nearest users split by what they did next",
    )
    p.add_argument("user", help="user id")
    p.add_argument(
        "--events", type=Path, required=True, help="JSON lines or Parquet holding the user"
    )
    p.add_argument("--model", default=None, help="version (default: active)")
    p.add_argument(
        "--outcome",
        action="append",
        default=None,
        help="outcome name, e.g. '(any)' or 'type=purchase'; repeat for more (default: "
        "(any) and the outcomes that moved most); the first one picks the neighbours' state",
    )
    p.add_argument("--outcomes", type=int, default=3, help="how many outcomes by default")
    p.add_argument(
        "--horizon",
        default=None,
        help="1h, 1d, 3d, 1w or 2w (default: where the first outcome moved most)",
    )
    p.add_argument("--top", type=int, default=5, help="moving events shown per outcome")
    p.add_argument(
        "--shown", type=int, default=None, help="newest events explained (default: max_events)"
    )
    p.add_argument(
        "--at",
        type=int,
        default=None,
        help="the neighbours' state: index of a shown event (default: the largest shift)",
    )
    p.add_argument("--neighbours", type=int, default=20, help="nearest users (0: none)")
    p.add_argument(
        "--now-ms", type=int, default=None, help="explain up to this time (default: log end)"
    )
    p.add_argument("--png", type=Path, default=None, help="draw the trajectory here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when present)")
    add_models_arg(p)
    p.set_defaults(func=guarded(cmd_explain))
