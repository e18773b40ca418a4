"""`persona produce`, `persona ingest`, `persona window`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.config import add_connection_args, add_metrics_arg, add_models_arg, setting_flag

if TYPE_CHECKING:
    from services.cli.settings import Settings

EXIT_NOT_CAUGHT_UP = 3  # `ingest --until-idle` gave up: the topic is not committed to its end


def register(sub: Any) -> None:
    p = sub.add_parser("produce", help="write events to the events topic")
    add_connection_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="synthetic users with planted truth")
    src.add_argument("--file", type=Path, help="JSON lines in the Event JSON shape ('-' = stdin)")
    p.add_argument("--users", type=int, default=2000, help="synthetic: number of users")
    p.add_argument("--events", type=int, default=200_000, help="synthetic: total events (about)")
    setting_flag(p, "kafka.partitions", "--partitions", metavar="N",
                 help="partitions of the topics, when they are created here")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="synthetic: seed")
    p.add_argument("--format", choices=("proto", "json"), default="proto", help="wire format")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser(
        "ingest",
        help="consume events into per-user windows",
        description="Consume events into per-user windows. When the --models folder exists,"
        " also keep the short-term state of every written model version with a short-term"
        " head (its row of each new event, beside the window), and after each write the"
        " head's output for the users written (their delta): serving then adds it without"
        " reading the window (LAYOUT.md 'Short-term state', 'Short-term delta').",
    )
    add_connection_args(p)
    add_metrics_arg(p)
    add_models_arg(p)
    setting_flag(p, "kafka.group_id", "--group", metavar="GROUP")
    p.add_argument(
        "--until-idle",
        action="store_true",
        help="exit 0 once every partition of the topic (not only this member's) is applied"
        f" and committed to its end; exit {EXIT_NOT_CAUGHT_UP} when that wait makes no"
        " progress for the session timeout plus the max poll interval",
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="ignore stored offsets (event-id dedup only): with a new --group, re-reads the"
        " topic to refill windows after a store shard lost its data",
    )
    p.add_argument(
        "--no-short-term-deltas",
        dest="short_term_deltas",
        action="store_false",
        help="with the models: keep the short-term state only, without computing each applied"
        " user's delta after the write (ingest's throughput ~1.5x; serving folds the state"
        " itself: ~+1 ms a 100-id call where every user has new events; LAYOUT.md"
        " 'Short-term delta')",
    )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("window", help="print a user's window as JSON lines, oldest first")
    add_connection_args(p)
    p.add_argument("user_id", help="the user whose window to print")
    p.set_defaults(func=cmd_window)


def _ensure_topics(s: Settings) -> None:
    from services.common.kafka_admin import TopicSpec, ensure_topics

    ensure_topics(
        s.kafka.bootstrap,
        [TopicSpec(s.kafka.topic, s.kafka.partitions), TopicSpec(s.kafka.dlq_topic, 1)],
    )


def cmd_produce(args: argparse.Namespace) -> int:
    from services.cli.runtime import service_logging
    from services.ingest.produce import produce_events, produce_lines

    s: Settings = args.settings
    service_logging(s.telemetry, "produce")  # and traces, when on: the records carry them
    _ensure_topics(s)
    t0 = time.perf_counter()
    if args.synthetic:
        from encoder.synthetic import SyntheticConfig, generate

        per_user = max(1.0, args.events / max(1, args.users))
        ds = generate(SyntheticConfig(users=args.users, events_per_user=per_user, seed=args.seed))
        n = produce_events(s.kafka, ds.events, args.format)
    elif str(args.file) == "-":
        n = produce_lines(s.kafka, sys.stdin.buffer)
    else:
        with args.file.open("rb") as fh:
            n = produce_lines(s.kafka, fh)
    dt = time.perf_counter() - t0
    print(json.dumps({"produced": n, "topic": s.kafka.topic, "seconds": round(dt, 2)}))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from services.cli.runtime import metrics_endpoint, service_logging, stop_on_signals

    stop = stop_on_signals()  # first: a SIGTERM during the imports below still drains

    from prometheus_client import CollectorRegistry

    from services.common.heads import RegistryHeads
    from services.ingest.consumer import Ingestor
    from services.ingest.metrics import ingest_metrics
    from services.ingest.states import StateKeeper
    from services.store.client import connect
    from services.store.vectors import VectorStore
    from services.store.windows import WindowStore
    from services.telemetry import tracer

    s: Settings = args.settings
    service_logging(s.telemetry, "ingest")
    _ensure_topics(s)
    registry = CollectorRegistry()
    metrics = ingest_metrics(registry)
    client = connect(s.store.redis)
    windows = WindowStore(client, s.window)
    vectors, states = None, None
    if s.process.models.is_dir():  # the short-term state needs the versions and their heads
        vectors = VectorStore(client)
        states = StateKeeper(vectors.versions, RegistryHeads(s.process.models),
                             store=vectors if args.short_term_deltas else None)  # fmt: skip
    try:
        with metrics_endpoint(s.process, registry):
            ingestor = Ingestor(s.kafka, s.window, windows, metrics, rebuild=args.rebuild,
                                tracer=tracer(), states=states)  # fmt: skip
            t0 = time.perf_counter()
            stats = ingestor.run(stop, until_idle=args.until_idle)
            dt = time.perf_counter() - t0
    finally:
        windows.close()
        if vectors is not None:
            vectors.close()
        client.close()
    out = {**stats.__dict__, "seconds": round(dt, 2)}
    print(json.dumps(out))
    if stats.caught_up is False:
        print(
            "persona ingest --until-idle: gave up waiting; some partitions of the topic are"
            " not committed to their end (see the log)",
            file=sys.stderr,
        )
        return EXIT_NOT_CAUGHT_UP
    return 0


def cmd_window(args: argparse.Namespace) -> int:
    from services.store.client import connect
    from services.store.windows import WindowStore

    s: Settings = args.settings
    client = connect(s.store.redis)
    windows = WindowStore(client, s.window)
    try:
        (w,) = windows.read([args.user_id])
    finally:
        windows.close()
        client.close()
    for ev in w.events:
        print(json.dumps(ev.to_json_dict(), ensure_ascii=False))
    return 0
