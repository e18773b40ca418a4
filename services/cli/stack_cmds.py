"""`persona up`: run the embedded stack until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from services.config import setting_flag

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "up",
        help="start the embedded stack (Tansu + Valkey) and print its addresses",
        description=(
            "Start a Tansu broker and Valkey (one node, or a 3-node cluster with --cluster) "
            "on free loopback ports, print one JSON line with their addresses, and run until "
            "SIGINT/SIGTERM; then stop every child."
        ),
    )
    p.add_argument("--cluster", action="store_true", help="a 3-node Valkey cluster")
    setting_flag(p, "kafka.partitions", "--partitions", metavar="N",
                 help="partitions of the events topic")  # fmt: skip
    p.set_defaults(func=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    from services.cli.runtime import service_logging
    from services.stack import EmbeddedStack, StackConfig

    service_logging(args.settings.telemetry, "up")
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = EmbeddedStack(
        StackConfig(cluster=args.cluster, partitions=args.settings.kafka.partitions)
    )
    try:
        addresses = stack.start()
        sys.stdout.write(addresses.to_json() + "\n")
        sys.stdout.flush()
        while not stopping.wait(0.5):
            dead = [c.name for c in stack.children() if not c.alive()]
            if dead:
                log.error("child process(es) exited: %s; stopping", ", ".join(dead))
                return 1
        log.info("signal received; stopping the stack")
        return 0
    finally:
        stack.stop()
