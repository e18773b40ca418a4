"""`persona refresh` and `persona cutover promote V | rollback | retire V | status`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from services.config import (
    add_connection_args,
    add_metrics_arg,
    add_models_arg,
    setting_flag,
)

if TYPE_CHECKING:
    from services.cli.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("refresh", help="re-encode dirty users into versioned vectors")
    add_connection_args(p)
    add_models_arg(p)
    add_metrics_arg(p)
    p.add_argument("--until-idle", action="store_true", help="exit 0 once no user is dirty")
    setting_flag(p, "refresh.interval_s", "--interval", metavar="S")
    setting_flag(p, "refresh.drain_threshold", "--drain-threshold", metavar="N")
    setting_flag(p, "refresh.batch_size", "--batch-size", metavar="N")
    setting_flag(p, "refresh.history", "--history", metavar="N")
    setting_flag(
        p, "refresh.ttl_s", "--ttl-s", metavar="S", help="vectors expire after S s; 0 = never"
    )
    setting_flag(p, "refresh.dtype", "--float16", const="float16", help="store vectors as float16")
    setting_flag(
        p,
        "refresh.device",
        "--device",
        metavar="DEVICE",
        help="encoder device: cpu / cuda; unset = cuda when present",
    )
    setting_flag(
        p,
        "refresh.compile",
        "--compile",
        const=True,
        help="compile the encoder's layers (CPU: ~1.3x the encode rate, seconds per version"
        " loaded; needs a C++ compiler)",
    )
    setting_flag(
        p,
        "refresh.bf16",
        "--bf16",
        const=True,
        help="encode in bf16 on a CPU with native bf16 (AVX512-BF16 / AMX: 1.4-2x the encode"
        " rate; float32 with a warning elsewhere)",
    )
    setting_flag(
        p,
        "refresh.encode_streams",
        "--encode-streams",
        metavar="N",
        help="encode N batches at once on the CPU, each on its own thread (one per core:"
        " ~1.16-1.18x the compiled bf16 rate on 2 cores); default 1",
    )
    setting_flag(p, "refresh.embeddings_topic", "--embeddings-topic", metavar="TOPIC")
    setting_flag(
        p,
        "refresh.share_group",
        "--share-group",
        metavar="GROUP",
        help="divide the buckets with the other refreshers of GROUP (a Kafka consumer group);"
        " unset = take every bucket",
    )
    setting_flag(p, "refresh.expire_after_days", "--expire-after-days", metavar="DAYS",
                 help="forget users without events for DAYS days; 0 = never")  # fmt: skip
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser(
        "cutover",
        help="model version cutover in the store: promote | rollback | retire | status",
        description="promote V: mark V back-filling (the refresher back-fills it, then flips"
        " the active pointer); rollback: flip back to the previous version; retire V: stop"
        " writing V; status: the versions and their states. Exit 1 when refused or when"
        " --wait runs out.",
    )
    p.add_argument("action", choices=["promote", "rollback", "retire", "status"], help="what to do")
    p.add_argument("version", nargs="?", default=None, help="the model version (promote, retire)")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="promote: wait up to S s for the back-fill and the flip (a progress bar on a"
        " terminal); 0 = return at once",
    )
    add_connection_args(p)
    add_models_arg(p)
    p.set_defaults(func=cmd_cutover)


def cmd_refresh(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from prometheus_client import CollectorRegistry

    from services.cli.progress import watch
    from services.cli.runtime import metrics_endpoint, service_logging, stop_on_signals
    from services.common.kafka import producer
    from services.common.kafka_admin import TopicSpec, ensure_topics
    from services.refresh.encoders import EncoderCache
    from services.refresh.metrics import refresh_metrics
    from services.refresh.publish import Publisher
    from services.refresh.refresher import Refresher
    from services.refresh.share import GroupShare, group_share
    from services.store.client import connect
    from services.store.forget import StoreForgetter
    from services.store.vectors import VectorStore
    from services.store.windows import WindowStore
    from services.telemetry import tracer

    s: Settings = args.settings
    service_logging(s.telemetry, "refresh")
    cfg = s.refresh
    ensure_topics(
        s.kafka.bootstrap,
        [TopicSpec(cfg.embeddings_topic, s.kafka.partitions, {"cleanup.policy": "compact"})],
    )
    stop = stop_on_signals()
    registry = CollectorRegistry()
    client = connect(s.store.redis)
    windows = WindowStore(client, s.window)
    vectors = VectorStore(client, cfg.history, cfg.ttl_s, cfg.dtype)
    forgetter = StoreForgetter(client)
    share: GroupShare | None = None
    try:
        if cfg.share_group:
            share = group_share(cfg, s.kafka)
            share.start()
            if args.until_idle and not share.wait_assigned(60):
                raise TimeoutError(f"no bucket ranges from group {cfg.share_group} in 60 s")
        with metrics_endpoint(s.process, registry):
            refresher = Refresher(
                cfg,
                windows,
                vectors,
                Publisher(producer(s.kafka), cfg.embeddings_topic, cfg.max_publish_wait_s),
                EncoderCache(
                    s.process.models, cfg.device, cfg.compile, cfg.bf16, cfg.encode_streams
                ),
                refresh_metrics(registry),
                tracer(),
                forgetter,
                share,
            )
            t0 = time.perf_counter()
            with watch(lambda: refresher.stats.backfilled, "back-fill", "user"):
                stats = refresher.run(stop, until_idle=args.until_idle)
            dt = time.perf_counter() - t0
    finally:
        if share is not None:
            share.close()  # leaves the group: the others take its buckets at once
        windows.close()
        vectors.close()
        forgetter.close()
        client.close()
    print(json.dumps({**stats.__dict__, "seconds": round(dt, 2)}))
    return 0


def cmd_cutover(args: argparse.Namespace) -> int:
    from encoder.registry import RegistryError
    from services.cli.progress import countdown
    from services.refresh import cutover
    from services.store.client import connect
    from services.store.vectors import CutoverError, VectorStore

    s: Settings = args.settings
    if args.action in ("promote", "retire") and not args.version:
        print(f"persona cutover: {args.action} needs a VERSION", file=sys.stderr)
        return 2
    client = connect(s.store.redis)
    try:
        store = VectorStore(client)
        try:
            if args.action == "promote":
                state = cutover.promote(store, s.process.models, args.version)
                if state != "active" and args.wait > 0:
                    tick = countdown(args.wait, f"back-fill of {args.version}")
                    try:
                        ok = cutover.wait_active(store, args.version, args.wait, on_poll=tick)
                    finally:
                        tick(-1, "")
                    if not ok:
                        print(
                            f"persona cutover: {args.version} still back-filling after"
                            f" {args.wait} s",
                            file=sys.stderr,
                        )
                        return 1
                    state = "active"
                print(f"{args.version}: {state}")
            elif args.action == "rollback":
                frm, to = cutover.rollback(store)
                print(f"rolled back {frm} -> {to}")
            elif args.action == "retire":
                cutover.retire(store, args.version)
                print(f"{args.version}: retired")
            else:
                print(json.dumps(cutover.status(store), indent=2))
        except (CutoverError, RegistryError) as exc:
            print(f"persona cutover: refused: {exc}", file=sys.stderr)
            return 1
    finally:
        client.close()
    return 0
