"""Ingest throughput: a bare consume loop vs the full ingest path, same topic.

All read the same N events (synthetic, protobuf) from the embedded Tansu broker, each with
its own consumer group. The baseline only consumes and counts, with librdkafka
(confluent-kafka), the client the ingest path uses (services/ingest/source.py). (The issue's
first reference, a bare kafka-python loop, left with kafka-python; its last numbers are in
the README.) The full path also decodes, validates, updates windows in the
3-node Valkey cluster and commits offsets after every batch. The group join (seconds on
Tansu) is left out of every rate: timing runs from the first batch to the last record (bare)
or the last commit (full). The machine is shared, so the two run in turn for `--rounds`
rounds (the store flushed before each full run); `ratio:` is the median of the per-round
full / bare librdkafka loop ratios.

With `--models DIR --version V` (a version with a short-term head) each round also runs the
full path keeping the short-term state of V (each event's head row computed and appended by
APPLY; services/ingest/states.py), once without and once with the deltas (each applied
user's delta computed and stored after the APPLY, as `persona ingest --models` does), every
user having a vector of V written before the run (so that every delta is computed; no
refresh folds anything meanwhile, so a user with more than the state's 32 applies has its
window read by script: keep the events per user small, e.g. `--users 20000`); `state
ratio:` and `delta ratio:` are the medians of the per-round ratios to the full path.

    .venv/bin/python benchmarks/ingest.py [--users 2000] [--events 200000] [--rounds 3] [--single]
        [--models DIR --version V]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from encoder.synthetic import SyntheticConfig, generate
from services.common import kafka as kafka_clients
from services.common.heads import RegistryHeads
from services.config import KafkaConfig, WindowConfig
from services.ingest.consumer import Ingestor
from services.ingest.metrics import ingest_metrics
from services.ingest.produce import produce_events
from services.ingest.states import StateKeeper
from services.stack import EmbeddedStack, StackConfig
from services.store.client import connect
from services.store.layout import STATE_CAP
from services.store.records import StoredVector
from services.store.vectors import VectorStore
from services.store.windows import WindowStore


def bare_rdkafka_loop(cfg: KafkaConfig, n: int) -> float:
    """Events/s of consume-and-count with librdkafka, touching each record's value."""
    consumer = Consumer(
        {
            **kafka_clients.rdkafka_config(cfg.bootstrap),
            "group.id": cfg.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([cfg.topic])
    seen, t0 = 0, None
    try:
        while seen < n:
            # What is fetched already, else the first record to come (consume(n, timeout)
            # alone waits for n records: the topic's last partial batch would wait 0.5 s).
            msgs = consumer.consume(cfg.max_poll_records, 0) or consumer.consume(1, 0.5)
            for m in msgs:
                if m.error() is None:
                    if t0 is None:
                        t0 = time.perf_counter()
                    m.value()
                    seen += 1
        assert t0 is not None
        return seen / (time.perf_counter() - t0)
    finally:
        consumer.close()


def full_path(
    cfg: KafkaConfig, redis_url: str, profile: bool, state: tuple[Path, str, int] | None = None,
    users: Sequence[str] = (), deltas: bool = False,
) -> tuple[float, int]:  # fmt: skip
    """Events/s of the full ingest path (with `state`: (registry, version, cap), keeping
    that version's short-term state, and with `deltas` the deltas of `users`, who get a
    vector first) and the events applied."""
    client = connect(redis_url)
    store = WindowStore(client, WindowConfig())
    keeper, vectors = None, None
    if state is not None:  # the version active in the store, its head from the registry
        vectors = VectorStore(client)
        vectors.set_active(state[1])
        keeper = StateKeeper(vectors.versions, RegistryHeads(state[0]), cap=state[2],
                             store=vectors if deltas else None)  # fmt: skip
        got = keeper.current()
        if [v for v, _ in got] != [state[1]]:
            raise SystemExit(f"{state[1]} in {state[0]} has no short-term head")
        dim = got[0][1].out_dim  # a vector before every event (marker at ts 1, window v 0)
        vectors.put_batch([StoredVector(u, state[1], np.zeros(dim, np.float32), 1, 0, 0, None,
                                        (1, "0")) for u in users])  # fmt: skip
    ing = Ingestor(cfg, WindowConfig(), store, ingest_metrics(CollectorRegistry()), states=keeper)
    prof = cProfile.Profile() if profile else None
    try:
        if prof:
            prof.enable()
        stats = ing.run(threading.Event(), until_idle=True)
        if prof:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    finally:
        store.close()
        if vectors is not None:
            vectors.close()
        client.close()
    return stats.applied / stats.busy_seconds, stats.applied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--single", action="store_true", help="one Valkey node instead of a cluster")
    ap.add_argument("--rounds", type=int, default=3, help="bare/full pairs, median ratio")
    ap.add_argument("--profile", action="store_true", help="cProfile the full path")
    ap.add_argument("--models", type=Path, default=None, help="registry (with --version)")
    ap.add_argument("--version", default="", help="a version with a short-term head")
    ap.add_argument("--state-cap", type=int, default=STATE_CAP, help="entries a state keeps")
    args = ap.parse_args()
    on = args.models and args.version
    state = (args.models, args.version, args.state_cap) if on else None
    logging.basicConfig(level=logging.WARNING)
    ds = generate(SyntheticConfig(users=args.users, events_per_user=args.events / args.users))
    with EmbeddedStack(StackConfig(cluster=not args.single)) as stack:
        a = stack.addresses
        base = KafkaConfig(bootstrap=a.bootstrap, topic=a.topic, dlq_topic=a.dlq_topic)
        n = produce_events(base, ds.events)
        rounds: list[tuple[float, float]] = []
        kept: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            flush(a.redis)
            bare_rd = bare_rdkafka_loop(group(base, "r"), n)
            full, applied = full_path(group(base, "f"), a.redis, args.profile)
            assert applied == n, f"applied {applied} of {n}"
            rounds.append((bare_rd, full))
            if state is not None:
                users = sorted({e.user_id for e in ds.events})
                got = []
                for deltas in (False, True):
                    flush(a.redis)
                    rate, applied = full_path(group(base, "s"), a.redis, False, state, users,
                                              deltas)  # fmt: skip
                    assert applied == n, f"applied {applied} of {n}"
                    got.append(rate)
                kept.append((got[0], got[1]))
    store = "1 Valkey node" if args.single else "3-node Valkey cluster"
    print(f"\n{n} events, {args.users} users, protobuf, {store}, one process\n")
    print("| round | bare librdkafka loop, events/s | full ingest (librdkafka; decode, validate,"
          " window update, commit), events/s | full / bare librdkafka |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: |")
    for i, (bare_rd, full) in enumerate(rounds, 1):
        print(f"| {i} | {bare_rd:,.0f} | {full:,.0f} | {full / bare_rd:.2f} |")
    print(f"\nratio: {statistics.median(f / r for r, f in rounds):.2f}")
    if kept:
        print("\n| round | full ingest, events/s | + short-term state of one version | state /"
              " full | + its deltas | deltas / full |")  # fmt: skip
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        pairs = list(zip(rounds, kept, strict=True))
        for i, ((_, full), (st, de)) in enumerate(pairs, 1):
            print(f"| {i} | {full:,.0f} | {st:,.0f} | {st / full:.2f} | {de:,.0f} |"
                  f" {de / full:.2f} |")  # fmt: skip
        ratio = statistics.median(st / f for (_, f), (st, _) in pairs)
        dratio = statistics.median(de / f for (_, f), (_, de) in pairs)
        print(f"\nstate ratio: {ratio:.2f}, delta ratio: {dratio:.2f}")


def group(base: KafkaConfig, prefix: str) -> KafkaConfig:
    """`base` with a fresh consumer group (every run reads the topic from the start)."""
    return KafkaConfig(**{**base.__dict__, "group_id": f"{prefix}-{uuid.uuid4().hex}"})


def flush(redis_url: str) -> None:
    """Empty every node of the store (each full run starts from empty windows)."""
    client = connect(redis_url)
    try:
        client.flushall()
    finally:
        client.close()


if __name__ == "__main__":
    main()
