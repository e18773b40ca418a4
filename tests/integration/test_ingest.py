"""Ingestion end to end on the real broker and a real Valkey cluster, against ground truth."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from persona.v1 import events_pb2
from prometheus_client import CollectorRegistry

from contract.codec import event_to_json, event_to_proto
from contract.events import Event
from services.config import WindowConfig
from services.ingest.consumer import DLQ_REASON, DLQ_SOURCE, Ingestor
from services.ingest.metrics import ingest_metrics
from services.ingest.produce import produce_events
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.windows import WindowStore
from tests.integration.ingest_support import (
    ingest_until_idle,
    kcfg_for,
    mismatches,
    produce_raw,
    quirky_events,
    read_topic,
    sample,
    truth,
)

pytestmark = pytest.mark.integration
WCFG = WindowConfig(max_events=16)


def test_windows_match_ground_truth_and_replay_changes_nothing(
    cluster_stack: EmbeddedStack, make_topic: Callable[..., str]
) -> None:
    a = cluster_stack.addresses
    topic = make_topic(a.bootstrap, 4, "ing")
    kcfg = kcfg_for(a.bootstrap, topic, f"g-{uuid.uuid4().hex}")
    events = quirky_events(users=150, n=3000, seed=1, prefix=f"{topic}-")
    n = produce_events(kcfg, events[:2000], "proto") + produce_events(kcfg, events[2000:], "json")
    run = ingest_until_idle(kcfg, a.redis, WCFG)
    records = read_topic(a.bootstrap, topic)
    assert len(records) == n == run.stats.consumed
    ref = truth(records, WCFG)
    client = connect(a.redis)
    try:
        store = WindowStore(client, WCFG)
        assert mismatches(store, ref, a.bootstrap, topic) == []
        applied = sample(run.registry, "persona_ingest_events_applied_total")
        dups = sample(run.registry, "persona_ingest_events_duplicate_total")
        assert applied + dups == n and dups > 0  # the re-sent events were seen and ignored
        assert sample(run.registry, "persona_ingest_batch_write_seconds_count") >= 1
        assert sample(run.registry, "persona_ingest_window_length_events_count") >= 150
        # A new group reads the whole topic again: every record is a replay, nothing changes.
        again = ingest_until_idle(
            kcfg_for(a.bootstrap, topic, f"g-{uuid.uuid4().hex}"), a.redis, WCFG
        )
        assert again.stats.replayed == n and again.stats.applied == 0
        assert mismatches(store, ref, a.bootstrap, topic) == []
    finally:
        client.close()


def test_bad_records_are_dead_lettered_with_reason_and_counted(
    stack: EmbeddedStack, make_topic: Callable[..., str]
) -> None:
    a = stack.addresses
    topic = make_topic(a.bootstrap, 2, "bad")
    make_topic_name = topic + ".dlq"
    from services.common.kafka_admin import TopicSpec, ensure_topics

    ensure_topics(a.bootstrap, [TopicSpec(make_topic_name, 1)])
    kcfg = kcfg_for(a.bootstrap, topic, f"g-{uuid.uuid4().hex}")
    now = int(time.time() * 1000)
    good = [
        Event(f"{topic}-ok{i}", f"ok{i}", now - 1000 * i, "view", {"item": "i1"}) for i in range(5)
    ]
    bad = {
        b"\x08\x96\x01\xff\xff garbage": "undecodable",
        b'{"user_id": "u", "event_id": ': "undecodable",
        events_pb2.Event(event_id="e", ts_ms=5, type="t").SerializeToString(): "missing_user_id",
        event_to_json(Event("u-future", "f1", now + 3 * 86_400_000, "view")): "future_timestamp",
        event_to_proto(Event("u-big", "b1", now, "view", {"blob": "x" * 70_000})): "oversized",
    }
    lines = [event_to_json(e) for e in good[:3]] + list(bad) + [event_to_json(e) for e in good[3:]]
    produce_raw(kcfg, lines)
    run = ingest_until_idle(kcfg, a.redis, WCFG)
    assert run.stats.applied == len(good) and run.stats.dead_lettered == len(bad)
    dead = read_topic(a.bootstrap, make_topic_name)
    got = {value: dict(headers)[DLQ_REASON].decode() for _, _, value, headers in dead}
    assert got == bad  # each bad record, byte for byte, with its reason
    assert all(dict(h)[DLQ_SOURCE].decode().startswith(topic + "/") for *_, h in dead)
    for why in set(bad.values()):
        expect = sum(1 for r in bad.values() if r == why)
        labels = {"reason": why}
        assert sample(run.registry, "persona_ingest_events_dead_lettered_total", labels) == expect
    client = connect(a.redis)
    try:
        windows = WindowStore(client, WCFG).read([e.user_id for e in good])
        assert [w.events for w in windows] == [[e] for e in good]
    finally:
        client.close()


def test_two_members_split_partitions_and_give_the_same_windows(
    cluster_stack: EmbeddedStack, make_topic: Callable[..., str]
) -> None:
    a = cluster_stack.addresses
    topic = make_topic(a.bootstrap, 4, "grp")
    group = f"g-{uuid.uuid4().hex}"
    events = quirky_events(users=120, n=2500, seed=2, prefix=f"{topic}-")
    kcfg = kcfg_for(a.bootstrap, topic, group, max_poll_records=100)
    produce_events(kcfg, events)
    stop = threading.Event()
    members: list[Ingestor] = []
    clients = []
    threads = []
    for _ in range(2):
        client = connect(a.redis)
        clients.append(client)
        ing = Ingestor(kcfg, WCFG, WindowStore(client, WCFG), ingest_metrics(CollectorRegistry()))
        members.append(ing)
        t = threading.Thread(target=ing.run, args=(stop,), kwargs={"poll_ms": 200})
        t.start()
        threads.append(t)
    try:
        ref = truth(read_topic(a.bootstrap, topic), WCFG)
        deadline = time.monotonic() + 60
        store = WindowStore(clients[0], WCFG)

        def last_assigned(m: Ingestor) -> list[int]:
            got = [parts for what, parts in m.assignment_changes if what == "assigned"]
            return got[-1] if got else []

        while time.monotonic() < deadline:
            split = [last_assigned(m) for m in members]
            consumed = sum(m.stats.consumed for m in members)
            if (
                all(split)
                and consumed >= len(events)
                and mismatches(store, ref, a.bootstrap, topic) == []
            ):
                break
            time.sleep(0.5)
        split = [last_assigned(m) for m in members]
        assert sorted(split[0] + split[1]) == [0, 1, 2, 3] and all(split), split
        assert mismatches(store, ref, a.bootstrap, topic) == []
        total_applied = sum(m.stats.applied + m.stats.duplicate for m in members)
        assert total_applied <= len(
            events
        )  # replays after the rebalance are skipped, not re-applied
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        for c in clients:
            c.close()
    assert not any(t.is_alive() for t in threads)


def test_a_small_burst_is_applied_and_committed_without_waiting_for_the_poll_timeout(
    cluster_stack: EmbeddedStack, make_topic: Callable[..., str]
) -> None:
    """A burst smaller than a batch must not wait for more records (or for the poll
    timeout) before it is applied, nor for the next record before it is committed: the
    poll timeout here is 30 s, and both must happen well within it."""
    a = cluster_stack.addresses
    topic = make_topic(a.bootstrap, 2, "burst")
    kcfg = kcfg_for(a.bootstrap, topic, f"g-{uuid.uuid4().hex}")
    client = connect(a.redis)
    ing = Ingestor(kcfg, WCFG, WindowStore(client, WCFG), ingest_metrics(CollectorRegistry()))
    stop = threading.Event()
    worker = threading.Thread(target=ing.run, args=(stop,), kwargs={"poll_ms": 10_000})
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not ing.assignment_changes and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ing.assignment_changes, "no partitions assigned within 60 s"
        events = quirky_events(users=3, n=5, seed=7, prefix=f"{topic}-")
        n = produce_events(kcfg, events, "proto")
        sent = time.monotonic()
        while ing.stats.batches == 0 and time.monotonic() - sent < 8:
            time.sleep(0.05)
        assert ing.stats.batches >= 1, "the burst was not committed within 8 s"
        assert ing.stats.consumed == n and ing.stats.applied + ing.stats.duplicate == n
    finally:
        stop.set()  # the poll in progress still runs out its 10 s timeout
        worker.join(timeout=30)
        client.close()
    assert not worker.is_alive()


def test_until_idle_reading_from_latest_exits_without_old_records(
    cluster_stack: EmbeddedStack, make_topic: Callable[..., str]
) -> None:
    """With auto_offset_reset=latest a new group starts at the end: caught up at once, so
    `--until-idle` must exit, not wait for a record to arrive."""
    a = cluster_stack.addresses
    topic = make_topic(a.bootstrap, 2, "latest")
    old = kcfg_for(a.bootstrap, topic, f"g-{uuid.uuid4().hex}")
    # One record per batch: Tansu answers "latest" too low after multi-record batches, and
    # then a "latest" reader would read some old records (still exiting, but not showing
    # that an unread partition counts as positioned at its end).
    for ev in quirky_events(users=4, n=6, seed=3, prefix=f"{topic}-"):
        produce_raw(old, [event_to_proto(ev)])
    kcfg = kcfg_for(a.bootstrap, topic, f"g-{uuid.uuid4().hex}", auto_offset_reset="latest")
    client = connect(a.redis)
    ing = Ingestor(kcfg, WCFG, WindowStore(client, WCFG), ingest_metrics(CollectorRegistry()))
    stop = threading.Event()
    worker = threading.Thread(target=ing.run, args=(stop,), kwargs={"until_idle": True})
    worker.start()
    try:
        worker.join(60)
        exited = not worker.is_alive()
    finally:
        stop.set()
        worker.join(30)
        client.close()
    assert exited, "--until-idle from latest did not exit within 60 s"
    assert ing.stats.consumed == 0
