"""Bounded load, loopback only: the GetEmbeddings knee and shedding at twice the knee; an
ingester fed faster than it can apply.

Objective: p99 of GetEmbeddings (20 ids) at or under 50 ms, on this 2-core machine with the
load generator, the server and Valkey sharing the cores. The measuring pieces are in
benchmarks/load.py (run it alone for a table). Everything here is count and time limited:
at most ~55 s of load in all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, TopicPartition

from benchmarks.load import (
    find_knee,
    requests_for,
    rss_kb,
    run_step,
    serving_users,
)
from contract.codec import event_to_proto
from services.common import kafka as kafka_clients
from services.config import WindowConfig
from services.stack import EmbeddedStack, StackConfig
from services.store.client import connect
from services.store.windows import WindowStore
from tests.faults.delay_proxy import DelayProxy
from tests.faults.support import compare, wait_for
from tests.integration.ingest_support import kcfg_for, quirky_events, read_topic, truth

pytestmark = [pytest.mark.integration, pytest.mark.faults]
OBJECTIVE_MS = 50.0
RATES = (50, 100, 200, 300, 400, 500, 650, 800, 1000, 1300, 1600, 2000)
PERSONA = [sys.executable, "-m", "services.cli"]


def test_get_embeddings_knee_and_shedding_at_twice_the_knee(
    report: Callable[..., None],
) -> None:
    with (
        EmbeddedStack(StackConfig(cluster=False)) as stack,
        serving_users(stack, 5000) as (stub, ids, proc),
    ):
        reqs = requests_for(ids, 20)
        run_step(stub, reqs, 100, 1.0, 1.0)  # warm-up
        res = find_knee(stub, reqs, RATES, OBJECTIVE_MS, step_s=1.5, deadline_s=1.0)
        assert res.knee > 0, [s.row() for s in res.steps]
        assert res.knee < RATES[-1], "no knee found: raise RATES"
        rss0 = rss_kb(proc.pid)
        # Twice the knee with a generous 5 s deadline: what bounds the latency of
        # accepted calls is the server's concurrency limit, not the client's patience.
        # The generator shares the 2 cores with the server, so a noisy knee can leave
        # 2x inside capacity (a stall during the search once made the knee 200/s where
        # 400/s had p99 4 ms); then 3x .. 8x follow (bounded), until the server sheds.
        for mult in (2, 3, 4, 6, 8):
            over = run_step(stub, reqs, mult * res.knee, 3.0, deadline_s=5.0)
            if over.codes["RESOURCE_EXHAUSTED"] + over.codes["UNAVAILABLE"] > 0:
                break
        rss1 = rss_kb(proc.pid)
        after = run_step(stub, reqs, res.knee / 2, 1.5, deadline_s=1.0)
    shed = over.codes["RESOURCE_EXHAUSTED"] + over.codes["UNAVAILABLE"]
    assert shed > 0, over.row()
    # Overload may also end calls by deadline or cancellation (the generator shares the two
    # cores with the server, so 3x or 4x the knee can starve both); never INTERNAL / UNKNOWN.
    fail_fast = {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}
    assert set(over.codes) <= {"OK"} | fail_fast, over.row()
    assert over.ok > 0 and over.p(99) < 5500, over.row()  # bounded by the 5 s deadline
    assert rss1 - rss0 < 50 * 1024, (rss0, rss1)
    assert after.errors == 0 and after.p(99) < 4 * OBJECTIVE_MS, after.row()  # recovered
    knee_step = [s for s in res.steps if s.rate == res.knee][-1]  # the passing run
    report(
        scenario=f"Load: GetEmbeddings (20 ids) knee at p99 <= {OBJECTIVE_MS:.0f} ms,"
        " then 2x (3x .. 8x) until it sheds",
        produced=over.sent,
        applied=over.ok,
        duplicated=0,
        lost=0,
        recovery_s=0.0,
        note=f"knee {res.knee:.0f} calls/s (p99 {knee_step.p(99):.1f} ms; steps"
        f" {', '.join(f'{s.rate:.0f}/s p99 {s.p(99):.0f} ms' for s in res.steps)});"
        f" at {mult}x = {mult * res.knee:.0f}/s for 3 s: {over.ok} OK (p99 {over.p(99):.0f} ms),"
        f" {shed} refused ({dict(over.codes)}); server RSS {rss0 // 1024}->{rss1 // 1024} MiB;"
        f" back at {res.knee / 2:.0f}/s: p99 {after.p(99):.1f} ms, 0 errors",
    )


def _lag_and_committed(c: Consumer, topic: str, parts: int) -> tuple[int, int]:
    tps = [TopicPartition(topic, p) for p in range(parts)]
    end = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)  # ListOffsets
    done = sum(max(0, tp.offset) for tp in c.committed(tps, timeout=10))
    return end - done, done


def test_ingest_fed_faster_than_it_applies_lag_grows_memory_flat(
    report: Callable[..., None],
) -> None:
    """The store answers each reply 50 ms late (DelayProxy) and the consumer takes 100
    records a poll, so it applies ~1-2k events/s; the producer sends ~4k/s for 10 s."""
    with EmbeddedStack(StackConfig(cluster=False, partitions=4)) as stack:
        a = stack.addresses
        group = f"lag-{uuid.uuid4().hex}"
        kcfg = kcfg_for(a.bootstrap, a.topic, group)
        events = quirky_events(users=2000, n=60_000, seed=21, prefix="ld")
        payloads = [(e.user_id.encode(), event_to_proto(e)) for e in events]
        port = int(a.redis.rsplit(":", 1)[1])
        env = {**os.environ, "PERSONA_GROUP": group, "PERSONA_MAX_POLL_RECORDS": "100"}
        argv = [*PERSONA, "ingest", "--bootstrap", a.bootstrap, "--topic", a.topic]
        with DelayProxy(port, delay_s=0.0) as proxy:
            log_path = stack.workdir / "ingest.log"
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    [*argv, "--redis", proxy.url], env=env, stdout=out, stderr=subprocess.STDOUT
                )
            prod = kafka_clients.producer(kcfg)
            # the group's offsets, read without joining it (never subscribes)
            watch = Consumer({**kafka_clients.rdkafka_config(a.bootstrap), "group.id": group})
            samples: list[tuple[float, int, int, int]] = []  # (t, lag, committed, rss KiB)
            try:
                # Start-up (group join) with a fast store, then the store slows down.
                for k, v in payloads[:500]:
                    prod.send(a.topic, key=k, value=v)
                prod.flush()
                wait_for(lambda: _lag_and_committed(watch, a.topic, 4)[1] >= 500, 60, "join")
                proxy.delay_s = 0.05
                sent, t0 = 500, time.monotonic()
                for tick in range(10):  # 10 s, ~4,000 events a second in 10 bursts each
                    for burst in range(10):
                        due = t0 + tick + burst / 10
                        time.sleep(max(0.0, due - time.monotonic()))  # pacing, not a wait
                        for k, v in payloads[sent : sent + 400]:
                            prod.send(a.topic, key=k, value=v)
                        sent += 400
                    prod.flush()
                    assert proc.poll() is None, "the consumer died"
                    lag, done = _lag_and_committed(watch, a.topic, 4)
                    samples.append((time.monotonic() - t0, lag, done, rss_kb(proc.pid)))
                # The store recovers: the backlog drains and every window equals the truth.
                proxy.delay_s = 0.0
                t_fast = time.monotonic()
                wait_for(lambda: _lag_and_committed(watch, a.topic, 4)[1] >= sent, 90, "the drain")
                drain_s = time.monotonic() - t_fast
            finally:
                prod.close(timeout_s=10)
                watch.close()
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        ref = truth(read_topic(a.bootstrap, a.topic), WindowConfig())
        client = connect(a.redis)
        try:
            lost, extra = compare(WindowStore(client, WindowConfig()), ref)
        finally:
            client.close()
    assert (lost, extra) == (0, 0)
    lags = [s[1] for s in samples]
    rss = [s[3] for s in samples[2:]]  # after the first fetches filled the buffers
    applied = samples[-1][2] - samples[0][2]
    assert lags[-1] > lags[2] + 10_000, lags  # the backlog grows: producer outruns it
    assert applied > 0, samples  # ... while the consumer keeps applying
    assert max(rss) - min(rss) < 40 * 1024, rss  # and its memory does not follow the lag
    report(
        scenario="Load: ingest fed ~4k events/s while the store allows ~1-2k/s (50 ms replies)",
        produced=sent,
        applied=samples[-1][2],
        duplicated=extra,
        lost=lost,
        recovery_s=round(drain_s, 1),
        note=f"lag {lags[0]:,} -> {lags[-1]:,} records over {samples[-1][0]:.0f} s, consumer"
        f" committed {applied:,} meanwhile; consumer RSS {min(rss) // 1024}-"
        f"{max(rss) // 1024} MiB (flat while the lag grew); store back to full speed:"
        f" backlog drained in the recovery time, every window equal to the truth",
    )
