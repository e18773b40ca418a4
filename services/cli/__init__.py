"""The `persona` command. Each module in COMMAND_MODULES registers its subcommands.

Heavy imports (torch, kafka, redis) happen inside the command functions, so `--help` is fast.

Exit codes (also in `persona --help`):
  0  done
  1  the work failed or was refused: a store or broker unreachable, a cutover or promotion
     refused, a wait that timed out, a quality check not met
  2  a usage error: an unknown flag, a missing argument, or a setting (flag or PERSONA_*
     variable) whose value its type or its component refuses
  130  interrupted (Ctrl-C) before the command could drain
Errors go to stderr as one line, `persona COMMAND: what`; results go to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

COMMAND_MODULES = (
    "services.cli.stack_cmds",
    "services.cli.ingest_cmds",
    "services.cli.encoder_cmds",
    "services.cli.eval_cmds",
    "services.cli.explain_cmds",
    "services.cli.refresh_cmds",
    "services.cli.forget_cmds",
    "services.cli.serve_cmds",
    "services.cli.config_cmds",
)

EPILOG = """\
settings: every flag that sets a setting also reads a PERSONA_* variable (flag, then the
variable, then the default); `persona config` lists them all with their effective values.
exit codes: 0 done; 1 the work failed or was refused (unreachable store or broker, refused
cutover, timed-out wait, unmet check); 2 usage error or a setting with a bad value;
130 interrupted."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("persona")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's help says its default; a setting's flag also names its variable."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        path = getattr(action, "setting", None)
        if path is not None:
            from services.cli.settings import BY_PATH, default_of, help_text, shown

            s = BY_PATH[path]
            text = help_text(path).rstrip(".") if text == path else text
            if getattr(action, "const", None) is not None:
                return f"{text} (sets {s.var}={action.const})"
            raw = os.environ.get(s.var)
            now = f"{raw!r} from {s.var}" if raw is not None else shown(path, default_of(path))
            return f"{text} (default: {now or 'unset'}; env {s.var})".replace("%", "%%")
        if (
            action.default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
            and "default" not in text
        ):
            return f"{text} (default: %(default)s)" if text else "default: %(default)s"
        return text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="persona", description="Nearline user embeddings, served.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"persona {version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line and resolve its settings.

    Each flag declared with `services.config.setting_flag` ends up holding its effective
    value (the flag, else its PERSONA_* variable, else the default), typed; `args.settings`
    is the whole validated tree (`services.cli.settings.Settings`).

    Raises:
        SettingsError: a value its type or its component refuses (one line, naming it).
        SystemExit: a usage error (argparse).
    """
    from services.cli import settings as tree

    args = build_parser().parse_args(argv)
    declared: dict[str, tuple[str, str]] = getattr(args, "setting_flags", {})
    given = {path: getattr(args, dest) for dest, (path, _) in declared.items()}
    given = {path: value for path, value in given.items() if value is not None}
    names = {path: flag for path, flag in declared.values()}
    args.settings = tree.load(given, names)
    args.settings_given = given
    for dest, (path, _) in declared.items():
        setattr(args, dest, tree.get(args.settings, path))
    return args


def _unreachable(exc: BaseException) -> bool:
    """A store or broker that refused or could not be reached: a one-line error, not a trace."""
    from confluent_kafka import KafkaException
    from redis.exceptions import AuthenticationError, ConnectionError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeout

    if isinstance(exc, AuthenticationError | ConnectionError | RedisTimeout | KafkaException):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))


def _bad_events_file(exc: BaseException) -> bool:
    """An --events file that is missing, unreadable, or holds something that is not an
    event (`encoder.io.EventFileError`): a one-line error and exit 2, not a trace."""
    from encoder.io import EventFileError

    return isinstance(exc, EventFileError)


def main(argv: list[str] | None = None) -> int:
    from services.cli.settings import SettingsError

    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
    except SettingsError as exc:
        command = next((a for a in argv if not a.startswith("-")), "")
        print(f"persona {command}: {exc}".replace("  ", " "), file=sys.stderr)
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print(f"persona {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _bad_events_file(exc):  # the message names the file and the line or row
            print(f"persona {args.command}: {exc}", file=sys.stderr)
            return 2
        if not _unreachable(exc):
            raise
        print(f"persona {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
