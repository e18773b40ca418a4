"""`make demo`: the flow on the embedded stack, step by step, with nothing left running.

Today: start Tansu + a 3-node Valkey cluster, produce synthetic events, ingest them into
windows, print a few windows and the throughput. Later steps (train, refresh, serve) join here.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry

from encoder.synthetic import SyntheticConfig, generate
from services.config import KafkaConfig, WindowConfig
from services.ingest.consumer import Ingestor
from services.ingest.metrics import ingest_metrics
from services.ingest.produce import produce_events
from services.stack import EmbeddedStack, StackConfig
from services.store.client import connect
from services.store.windows import WindowStore


@contextmanager
def step(title: str) -> Iterator[None]:
    print(f"==> {title} ...", flush=True)
    t0 = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - t0:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="Persona end to end on the embedded stack")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events-per-user", type=float, default=100.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with step(f"generating synthetic events for {args.users} users"):
        ds = generate(SyntheticConfig(users=args.users, events_per_user=args.events_per_user))
    with step("starting the embedded stack (Tansu broker, 3-node Valkey cluster)"):
        stack = EmbeddedStack(StackConfig(cluster=True))
        stack.start()
    try:
        a = stack.addresses
        print("    " + a.to_json())
        kcfg = KafkaConfig(bootstrap=a.bootstrap, topic=a.topic, dlq_topic=a.dlq_topic)
        with step(f"producing {len(ds.events):,} events to {a.topic}"):
            t0 = time.perf_counter()
            n = produce_events(kcfg, ds.events)
            produce_rate = n / (time.perf_counter() - t0)
        wcfg = WindowConfig()
        client = connect(a.redis)
        store = WindowStore(client, wcfg)
        registry = CollectorRegistry()
        with step("ingesting into per-user windows (consumer group, until idle)"):
            ing = Ingestor(kcfg, wcfg, store, ingest_metrics(registry))
            stats = ing.run(threading.Event(), until_idle=True)
        print("\nA few windows (last 3 events each, oldest first):")
        for w in store.read(sorted(ds.truth)[:3]):
            truth = ds.truth[w.user_id]
            print(
                f"  {w.user_id}: {len(w.events)} events, segment {truth.segment},"
                f" {truth.lifecycle}, window version {w.version}"
            )
            for ev in w.events[-3:]:
                print("    " + json.dumps(ev.to_json_dict()))
        print("\n| step | events | events/s |")
        print("| --- | ---: | ---: |")
        print(f"| produce (protobuf) | {n:,} | {produce_rate:,.0f} |")
        print(
            f"| ingest (decode, window update, commit; join excluded) | {stats.applied:,} |"
            f" {stats.applied / max(stats.busy_seconds, 1e-9):,.0f} |"
        )
        print(
            f"\nduplicates ignored: {stats.duplicate}, dead-lettered: {stats.dead_lettered},"
            f" users dirty for the refresher: {store.dirty_count()}"
        )
        client.close()
    finally:
        with step("stopping the stack"):
            stack.stop()


if __name__ == "__main__":
    main()
