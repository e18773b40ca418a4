"""Index follower catch-up: reading the update log into a lookalike index, beside bare reads.

A replica's readiness waits for its index to catch up with `persona.embeddings` (see
services/index/holder.py), so how fast the follower reads the log is how fast a new
replica takes traffic. One run, same topic (N update records, 4 partitions, embedded
Tansu), in turn:
- bare librdkafka loop: assign at the beginning, consume and count, with confluent-kafka
  (the follower's client);
- follower: `IndexFollower.catch_up` into a fresh PriorIndex (read, decode and validate,
  upsert, prior kept), with the index kept flat so no IVF training is timed; the IVF
  rebuild a catch-up of this size would end with is timed separately.

    .venv/bin/python benchmarks/follow.py [--n 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.updates import encode_update, log_key
from services.common.kafka_admin import TopicSpec, ensure_topics
from services.index import IndexConfig
from services.index.follower import IndexFollower
from services.index.prior import PriorIndex
from services.stack import EmbeddedStack, StackConfig

VERSION, DIM, PARTS = "vfollow-1", 64, 4


def produce(bootstrap: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    vecs = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    for i in range(n):
        u = f"user-{i}"
        producer.produce(topic, key=log_key(VERSION, u), value=encode_update(u, vecs[i], VERSION))
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("records left unsent")


def bare_librdkafka(bootstrap: str, topic: str, n: int) -> float:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"b-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})  # fmt: skip
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTS)])
    seen, t0 = 0, time.perf_counter()
    try:
        while seen < n:
            for m in c.consume(5000, 0) or c.consume(1, 0.2):
                if m.error() is None:
                    m.key(), m.value()
                    seen += 1
        return n / (time.perf_counter() - t0)
    finally:
        c.close()


def follower(bootstrap: str, topic: str, n: int) -> tuple[float, float]:
    """(records/s of catch_up into a flat index, seconds of the IVF rebuild after it)."""
    index = PriorIndex(IndexConfig(dim=DIM, exact_below=n + 1, gpu="off"))
    f = IndexFollower(bootstrap, topic, index, VERSION)
    t0 = time.perf_counter()
    try:
        if not f.catch_up(600) or index.size != n:
            raise RuntimeError(f"caught up {index.size} of {n}")
        rate = n / (time.perf_counter() - t0)
    finally:
        f.stop()
    # What the default config ends a catch-up of this size with: IVF training and adding.
    index.config = IndexConfig(dim=DIM, gpu="off")
    return rate, index.rebuild().seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with EmbeddedStack(StackConfig(cluster=False)) as stack:
        bs = stack.addresses.bootstrap
        topic = f"bench-embeddings-{uuid.uuid4().hex[:8]}"
        ensure_topics(bs, [TopicSpec(topic, PARTS)])
        produce(bs, topic, args.n)
        for _ in range(args.rounds):
            rows.append((bare_librdkafka(bs, topic, args.n), *follower(bs, topic, args.n)))
    print(f"\n{args.n:,} update records (dim {DIM}), {PARTS} partitions, embedded Tansu\n")
    print("| round | bare librdkafka, rec/s | follower catch-up (read, decode, upsert), rec/s"
          " | follower / bare librdkafka | IVF rebuild after, s |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: |")
    for i, (rd, fo, rb) in enumerate(rows, 1):
        print(f"| {i} | {rd:,.0f} | {fo:,.0f} | {fo / rd:.2f} | {rb:.1f} |")
    ratio = statistics.median(fo / rd for rd, fo, _ in rows)
    print(f"\nratio (follower / bare librdkafka, median): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
