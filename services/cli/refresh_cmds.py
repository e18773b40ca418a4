"""`persona refresh` and `persona cutover promote V | rollback | retire V | status`."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from contract import topics
from services.config import (
    add_connection_args,
    add_metrics_arg,
    add_models_arg,
    env,
    settings_from_args,
)


def register(sub: Any) -> None:
    p = sub.add_parser("refresh", help="re-encode dirty users into versioned vectors")
    add_connection_args(p)
    add_models_arg(p)
    add_metrics_arg(p)
    p.add_argument("--until-idle", action="store_true", help="exit 0 once no user is dirty")
    p.add_argument("--interval", type=float, default=float(env("REFRESH_INTERVAL_S", "30")))
    p.add_argument(
        "--drain-threshold", type=int, default=int(env("REFRESH_DRAIN_THRESHOLD", "10000"))
    )
    p.add_argument("--batch-size", type=int, default=int(env("REFRESH_BATCH", "512")))
    p.add_argument("--history", type=int, default=int(env("VECTOR_HISTORY", "4")))
    p.add_argument("--ttl-s", type=int, default=int(env("VECTOR_TTL_S", "0")), help="0 = none")
    p.add_argument("--float16", action="store_true", help="store vectors as float16")
    p.add_argument("--device", default=env("DEVICE", "") or None, help="cpu / cuda")
    p.add_argument("--embeddings-topic", default=env("EMBEDDINGS_TOPIC", topics.EMBEDDINGS))
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("cutover", help="model version cutover in the store: promote | rollback")
    p.add_argument("action", choices=["promote", "rollback", "retire", "status"])
    p.add_argument("version", nargs="?", default=None)
    p.add_argument("--wait", type=float, default=0.0, help="promote: wait up to S s for the flip")
    add_connection_args(p)
    add_models_arg(p)
    p.set_defaults(func=cmd_cutover)


def cmd_refresh(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from prometheus_client import CollectorRegistry

    from services.cli.runtime import metrics_endpoint, service_logging, stop_on_signals
    from services.common.kafka import producer
    from services.common.kafka_admin import TopicSpec, ensure_topics
    from services.refresh.config import RefreshConfig
    from services.refresh.encoders import EncoderCache
    from services.refresh.metrics import refresh_metrics
    from services.refresh.publish import Publisher
    from services.refresh.refresher import Refresher
    from services.store.client import connect
    from services.store.vectors import VectorStore
    from services.store.windows import WindowStore

    service_logging()
    s = settings_from_args(args)
    cfg = RefreshConfig(
        interval_s=args.interval,
        drain_threshold=args.drain_threshold,
        batch_size=args.batch_size,
        history=args.history,
        ttl_s=args.ttl_s or None,
        dtype="float16" if args.float16 else "float32",
        embeddings_topic=args.embeddings_topic,
        device=args.device,
    )
    ensure_topics(
        s.kafka.bootstrap,
        [TopicSpec(cfg.embeddings_topic, s.kafka.partitions, {"cleanup.policy": "compact"})],
    )
    stop = stop_on_signals()
    registry = CollectorRegistry()
    client = connect(s.redis)
    windows = WindowStore(client, s.window)
    vectors = VectorStore(client, cfg.history, cfg.ttl_s, cfg.dtype)
    try:
        with metrics_endpoint(s.metrics_port, registry):
            refresher = Refresher(
                cfg,
                windows,
                vectors,
                Publisher(producer(s.kafka), cfg.embeddings_topic, cfg.max_publish_wait_s),
                EncoderCache(s.models, cfg.device),
                refresh_metrics(registry),
            )
            t0 = time.perf_counter()
            stats = refresher.run(stop, until_idle=args.until_idle)
            dt = time.perf_counter() - t0
    finally:
        windows.close()
        vectors.close()
        client.close()
    print(json.dumps({**stats.__dict__, "seconds": round(dt, 2)}))
    return 0


def cmd_cutover(args: argparse.Namespace) -> int:
    from encoder.registry import RegistryError
    from services.refresh import cutover
    from services.store.client import connect
    from services.store.vectors import CutoverError, VectorStore

    s = settings_from_args(args)
    client = connect(s.redis)
    try:
        store = VectorStore(client)
        if args.action in ("promote", "retire") and not args.version:
            print(f"cutover {args.action} needs a VERSION")
            return 2
        try:
            if args.action == "promote":
                state = cutover.promote(store, s.models, args.version)
                if state != "active" and args.wait > 0:
                    if not cutover.wait_active(store, args.version, args.wait):
                        print(f"{args.version}: still back-filling after {args.wait} s")
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
            print(f"refused: {exc}")
            return 1
    finally:
        client.close()
    return 0
