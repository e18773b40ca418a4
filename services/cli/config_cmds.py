"""`persona config`: every setting's effective value and where it came from."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "config",
        help="print every setting's effective value and its source (secrets masked)",
        description="Print the effective settings: each PERSONA_* variable, the setting it"
        " sets, its value (flag, else the variable, else the default; secrets masked) and"
        " where the value came from. Exit 2 when a value is refused, naming it.",
    )
    p.add_argument(
        "prefix",
        nargs="?",
        default="",
        help="only settings whose path starts with this (e.g. serve, index, kafka)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--changed", action="store_true", help="only settings not at their default")
    p.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    from services.cli.settings import rows

    table = [
        r
        for r in rows(args.settings, args.settings_given)
        if r["setting"].startswith(args.prefix)
        and not (args.changed and r["source"].endswith("default"))
    ]
    if args.json:
        for r in table:
            print(json.dumps(r))
        return 0
    width = max((len(r["variable"]) for r in table), default=0)
    vwidth = min(40, max((len(r["value"]) for r in table), default=0))
    for r in table:
        print(f"{r['variable']:<{width}}  {r['value']:<{vwidth}}  {r['source']}")
    return 0
