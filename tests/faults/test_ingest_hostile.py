"""Hostile input on Kafka and a rebalance under load: every record applied or dead-lettered,
the counts add up, the consumer never dies, windows equal the ground truth."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from persona.v1 import events_pb2

from contract.codec import event_to_json, event_to_proto
from contract.events import Event
from services.common.kafka_admin import TopicSpec, ensure_topics
from services.config import WindowConfig
from services.ingest.consumer import DLQ_REASON
from services.ingest.produce import produce_events
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.windows import WindowStore
from tests.faults.support import PERSONA, compare, wait_for
from tests.integration.ingest_support import (
    ingest_until_idle,
    kcfg_for,
    produce_raw,
    quirky_events,
    read_topic,
    truth,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]
WCFG = WindowConfig(max_events=24)


def hostile_records(rng: random.Random, now: int, n: int) -> list[bytes]:
    good = Event("fz-u", "fz-e", now - 1000, "view", {"item": "i1"})
    proto = event_to_proto(good)
    weird = ["", "\x00", "\u202e", "\U0001f600" * 50, "{tag}", "a\nb", "\ud7ff", "ÿ" * 300]
    makers: list[Callable[[int], bytes]] = [
        lambda i: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),
        lambda i: proto[: rng.randrange(1, len(proto))],  # truncated protobuf
        lambda i: b'{"user_id": "u", "props": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        lambda i: json.dumps({"user_id": 5, "event_id": [], "ts_ms": "x", "type": {}}).encode(),
        lambda i: json.dumps(
            {
                "user_id": f"fz{i}",
                "event_id": f"e{i}",
                "ts_ms": now,
                "type": "t",
                "props": {"p": {"nested": True}},
            }
        ).encode(),
        lambda i: event_to_proto(Event(f"fz{i}", f"e{i}", now, "t", {"big": "x" * 5000})),
        lambda i: event_to_json(
            Event(
                rng.choice(weird) or f"w{i}",
                f"w-e{i}",
                now - i,
                rng.choice(weird) or "t",
                {rng.choice(weird) or "k": rng.choice(weird)},
            )
        ),
        lambda i: b"\xff" * rng.randrange(1, 100_000),
        lambda i: events_pb2.Event(
            user_id=f"fz{i}", event_id=f"e{i}", ts_ms=2**62, type="t"
        ).SerializeToString(),
        lambda i: event_to_proto(Event(f"fz-ok{i}", f"ok{i}", now - i, "view", {"i": "x"})),
    ]
    return [rng.choice(makers)(i) for i in range(n)]


def test_fuzzed_stream_every_record_applied_or_dead_lettered(
    stack: EmbeddedStack, make_topic: Callable[..., str], report: Callable[..., None]
) -> None:
    a = stack.addresses
    topic = make_topic(a.bootstrap, 2, "fuzz")
    ensure_topics(a.bootstrap, [TopicSpec(topic + ".dlq", 1)])
    kcfg = kcfg_for(a.bootstrap, topic, f"g-{uuid.uuid4().hex}")
    values = hostile_records(random.Random(5), int(time.time() * 1000), 600)
    produce_raw(kcfg, values)
    run = ingest_until_idle(kcfg, a.redis, WCFG)
    s = run.stats
    assert s.consumed == len(values)
    assert s.applied + s.duplicate + s.dead_lettered == len(values)  # the counts add up
    dead = read_topic(a.bootstrap, topic + ".dlq")
    assert len(dead) == s.dead_lettered and s.dead_lettered > 0 and s.applied > 0
    assert all(dict(h).get(DLQ_REASON) for *_, h in dead)  # each with a reason
    ref = truth(read_topic(a.bootstrap, topic), WCFG)
    client = connect(a.redis)
    try:
        assert compare(WindowStore(client, WCFG), ref) == (0, 0)
    finally:
        client.close()
    report(
        scenario="Fuzzed record stream (random bytes, truncated protobuf, nesting, wrong types,"
        " unicode edge cases, huge fields)",
        produced=len(values),
        applied=s.applied,
        duplicated=0,
        lost=0,
        recovery_s=0.0,
        note=f"{s.dead_lettered} dead-lettered with a reason, {s.duplicate} duplicates",
    )


def test_rebalance_under_load_second_member_joins_then_leaves(
    cluster_stack: EmbeddedStack,
    make_topic: Callable[..., str],
    report: Callable[..., None],
    tmp_path: Path,
) -> None:
    a = cluster_stack.addresses
    topic = make_topic(a.bootstrap, 4, "rebal")
    group = f"g-{uuid.uuid4().hex}"
    kcfg = kcfg_for(a.bootstrap, topic, group)
    events = quirky_events(users=300, n=16_000, seed=21, prefix=f"{topic}-")
    conn = ["--bootstrap", a.bootstrap, "--redis", a.redis, "--topic", topic, "--group", group]
    env = {**os.environ, "PERSONA_MAX_POLL_RECORDS": "200", "PERSONA_WINDOW_EVENTS": "24"}

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as fh:
            return subprocess.Popen(
                [*PERSONA, "ingest", *conn], env=env, stdout=subprocess.DEVNULL, stderr=fh
            )

    producer = threading.Thread(  # load keeps coming while members join and leave
        target=lambda: [
            produce_events(kcfg, events[i : i + 2000]) or time.sleep(0.4)
            for i in range(0, len(events), 2000)
        ]
    )
    first = start(tmp_path / "first.log")
    second = None
    t0 = time.monotonic()
    try:
        producer.start()
        time.sleep(3)
        log2 = tmp_path / "second.log"
        second = start(log2)  # joins: the group rebalances under load
        wait_for(lambda: b"partitions assigned" in log2.read_bytes(), 60, "the second member")
        time.sleep(2)
        second.send_signal(signal.SIGTERM)  # leaves cleanly: another rebalance
        assert second.wait(timeout=30) == 0
        producer.join(timeout=120)
        ref = truth(read_topic(a.bootstrap, topic), WCFG)
        client = connect(a.redis)
        try:
            store = WindowStore(client, WCFG)
            wait_for(lambda: compare(store, ref) == (0, 0), 120, "windows to match the truth")
            lost, extra = compare(store, ref)
        finally:
            client.close()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    report(
        scenario="Rebalance under load: a second ingest process joins, then leaves",
        produced=len(events),
        applied=None,  # two separate processes; the window comparison is the check
        duplicated=extra,
        lost=lost,
        recovery_s=round(time.monotonic() - t0, 1),
        note="windows compared after the load; recovery = run time to a full match",
    )
