"""Helpers for ingest tests: event sets with known quirks, reading a topic back, ground truth."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from contract.codec import BadRecord, decode_event, decode_for_store
from contract.events import Event
from services.common.kafka import rdkafka_config
from services.common.kafka_admin import topic_id
from services.config import KafkaConfig, WindowConfig
from services.ingest.consumer import Ingestor, IngestStats
from services.ingest.metrics import ingest_metrics
from services.store.client import connect
from services.store.reference import ReferenceWindows
from services.store.windows import WindowStore

T0 = 1_763_000_000_000
TYPES = ("view", "click", "add_to_cart", "purchase")


def quirky_events(users: int, n: int, seed: int, prefix: str = "u") -> list[Event]:
    """n events over `users` users with ~5% re-sent duplicates and out-of-order timestamps."""
    rng = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        if out and rng.random() < 0.05:
            out.append(rng.choice(out))  # a producer retry: same event id again, later offset
            continue
        uid = f"{prefix}{rng.randrange(users):05d}"
        ts = T0 + i * 1000 - rng.randrange(0, 600_000)  # up to 10 min out of order
        props: dict[str, str | float] = {"item": f"i{rng.randrange(500)}"}
        if rng.random() < 0.5:
            props["price"] = round(rng.uniform(1, 100), 2)
        out.append(Event(uid, f"{prefix}-e{i}", ts, rng.choice(TYPES), props))
    return out


def read_topic(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None, list]]:
    """Every record of `topic` as (partition, offset, value, headers), each partition in order."""
    c = _assigning_consumer(bootstrap)
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        parts = sorted(meta.partitions) if meta is not None and meta.error is None else []
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[tuple[int, int, bytes | None, list]] = []
        idle = 0
        while idle < 4:
            batch = c.consume(500, 0.3)
            idle = 0 if batch else idle + 1
            for m in batch:
                if m.error() is None:
                    part, off = m.partition(), m.offset()  # set on every consumed record
                    assert part is not None and off is not None
                    out.append((part, off, m.value(), list(m.headers() or [])))
            if all(_read_to_end(c, tp) for tp in tps):
                break
        return sorted(out, key=lambda r: (r[0], r[1]))
    finally:
        c.close()


def _assigning_consumer(bootstrap: str, group: str | None = None) -> Consumer:
    """A librdkafka consumer for assign() and committed(); it never joins `group`."""
    return Consumer(
        {
            **rdkafka_config(bootstrap),
            "group.id": group or f"tests-reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )


def _read_to_end(c: Consumer, tp: TopicPartition) -> bool:
    """Whether the position reached the high watermark of the last fetch response."""
    got = c.get_watermark_offsets(tp, cached=True)
    (pos,) = c.position([tp])
    return got is not None and got[1] >= 0 and pos.offset >= got[1]


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    """`group`'s committed offsets (next offset to read) by partition; 0 where none is."""
    c = _assigning_consumer(bootstrap, group)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: max(0, int(tp.offset)) for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


def truth(
    records: Iterable[tuple[int, int, bytes | None, list]], cfg: WindowConfig
) -> ReferenceWindows:
    """The windows the produced records must give, computed by the reference rules."""
    ref = ReferenceWindows(cfg)
    now = int(time.time() * 1000)
    for p, o, value, _ in records:
        try:
            decode_for_store(value, cfg, now)  # the consumer's refusals, the record's length too
            ev = decode_event(value, cfg, now)
        except BadRecord:
            continue
        ref.apply(p, o, ev)
    return ref


def mismatches(store: WindowStore, ref: ReferenceWindows, bootstrap: str, topic: str) -> list[str]:
    """User ids whose stored window differs from the reference (events and offsets)."""
    tid = topic_id(bootstrap, topic)
    uids = sorted(ref.users)
    bad = []
    for uid, w in zip(uids, store.read(uids), strict=True):
        if w.events != ref.window(uid) or dict(store.offsets(uid, tid)) != ref.users[uid].offsets:
            bad.append(uid)
    return bad


@dataclass
class Run:
    stats: IngestStats
    registry: CollectorRegistry
    ingestor: Ingestor


def ingest_until_idle(
    kcfg: KafkaConfig, redis_url: str, wcfg: WindowConfig | None = None, rebuild: bool = False
) -> Run:
    wcfg = wcfg or WindowConfig()
    registry = CollectorRegistry()
    client = connect(redis_url)
    try:
        ing = Ingestor(
            kcfg, wcfg, WindowStore(client, wcfg), ingest_metrics(registry), rebuild=rebuild
        )
        stats = ing.run(threading.Event(), until_idle=True, poll_ms=200)
    finally:
        client.close()
    return Run(stats, registry, ing)


def kcfg_for(bootstrap: str, topic: str, group: str, **kw: Any) -> KafkaConfig:
    return KafkaConfig(
        bootstrap=bootstrap, topic=topic, dlq_topic=topic + ".dlq", group_id=group, **kw
    )


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    v = registry.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def all_users(events: Sequence[Event]) -> set[str]:
    return {e.user_id for e in events}


def produce_raw(
    kcfg: KafkaConfig,
    values: Sequence[bytes],
    *,
    key: bytes | None = None,
    max_record_bytes: int | None = None,
) -> None:
    """Send values byte for byte (with `key`, default none), in order, to partition 0.
    `max_record_bytes` raises the producer's cap on one record (librdkafka's
    `message.max.bytes`, 1,000,000 by default)."""
    from services.common import kafka as kafka_clients

    cap = {} if max_record_bytes is None else {"message.max.bytes": max_record_bytes}
    prod = kafka_clients.producer(kcfg, cap)
    try:
        for v in values:
            prod.send(kcfg.topic, value=v, key=key, partition=0)
        prod.flush()
    finally:
        prod.close()
