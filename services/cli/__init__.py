"""The `persona` command. Each module in COMMAND_MODULES registers its subcommands.

Heavy imports (torch, kafka, redis) happen inside the command functions, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "services.cli.stack_cmds",
    "services.cli.ingest_cmds",
    "services.cli.encoder_cmds",
    "services.cli.eval_cmds",
    "services.cli.refresh_cmds",
    "services.cli.serve_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona", description="Nearline user embeddings, served."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _unreachable(exc: BaseException) -> bool:
    """A store or broker that refused or could not be reached: a one-line error, not a trace."""
    from kafka.errors import KafkaError
    from redis.exceptions import AuthenticationError, ConnectionError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeout

    if isinstance(exc, AuthenticationError | ConnectionError | RedisTimeout | KafkaError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except Exception as exc:
        if not _unreachable(exc):
            raise
        print(f"persona {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
