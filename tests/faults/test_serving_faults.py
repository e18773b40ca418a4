"""`persona serve` under faults: SIGKILLed mid-request, and a slow store behind it.

The server is the real CLI as a child process, reading a single-node embedded Valkey through
a loopback `DelayProxy` so latency can be injected between it and the store. For the
serving rows of the report, *produced* is calls sent, *applied* calls answered OK, and
*lost* calls that hung past their deadline or ended with a code the scenario does not allow.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc

from benchmarks.load import (
    DIM,
    VERSION,
    rss_kb,
    start_serve,
    stop_process,
    wait_serving,
    write_users,
)
from services.stack import EmbeddedStack, StackConfig, free_ports
from services.store.client import connect
from services.store.vectors import VectorStore
from tests.faults.delay_proxy import DelayProxy
from tests.faults.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]


class Served:
    """A private stack with users written, a delay proxy in front of Valkey, and the port
    for `persona serve`."""

    def __init__(self, stack: EmbeddedStack, proxy: DelayProxy, ids: list[str]) -> None:
        self.stack, self.proxy, self.ids = stack, proxy, ids
        [self.port] = free_ports(1)
        self.log = stack.workdir / "serve.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        proc = start_serve(self.proxy.url, self.port, self.log, extra)
        self.procs.append(proc)
        wait_serving(self.port, proc, 60)
        return proc


@pytest.fixture
def served() -> Iterator[Served]:
    with EmbeddedStack(StackConfig(cluster=False)) as stack:
        client = connect(stack.addresses.redis)
        try:
            ids = write_users(VectorStore(client), 2000)
        finally:
            client.close()
        port = int(stack.addresses.redis.rsplit(":", 1)[1])
        with DelayProxy(port) as proxy:
            s = Served(stack, proxy, ids)
            try:
                yield s
            finally:
                for p in s.procs:
                    stop_process(p)


def _stub(port: int) -> tuple[grpc.Channel, service_pb2_grpc.UserEmbeddingServiceStub]:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    return ch, service_pb2_grpc.UserEmbeddingServiceStub(ch)


def _ended(futs: list[grpc.Future], timeout_s: float) -> list[tuple[grpc.StatusCode, float]]:
    """(code, seconds from `_ended` being called) of every future; bounded wait."""
    t0 = time.monotonic()
    out = []
    for f in futs:
        try:
            f.result(timeout=max(0.0, timeout_s - (time.monotonic() - t0)))
            out.append((grpc.StatusCode.OK, time.monotonic() - t0))
        except grpc.FutureTimeoutError:
            out.append((grpc.StatusCode.UNKNOWN, float("inf")))  # still hanging
        except grpc.RpcError:
            out.append((f.code(), time.monotonic() - t0))
    return out


def _flood(
    stub: service_pb2_grpc.UserEmbeddingServiceStub,
    req: pb.GetEmbeddingsRequest,
    n: int,
    deadline_s: float,
) -> tuple[list[tuple[grpc.StatusCode, float]], list[float], list[float]]:
    """Send `n` calls at once: their (code, end) from `_ended`, and for each the time it was
    sent and the time it actually ended (a done callback, not when `_ended` looked)."""
    t0 = time.monotonic()
    sent_at = [0.0] * n
    done_at = [float("inf")] * n
    futs = []
    for i in range(n):
        sent_at[i] = time.monotonic() - t0
        f = stub.GetEmbeddings.future(req, timeout=deadline_s)
        f.add_done_callback(lambda _f, i=i: done_at.__setitem__(i, time.monotonic() - t0))
        futs.append(f)
    return _ended(futs, deadline_s + 7), sent_at, done_at


def test_server_sigkilled_mid_request_clients_see_unavailable_then_recover(
    served: Served, report: Callable[..., None]
) -> None:
    proc = served.start()
    store_client = connect(served.stack.addresses.redis)
    ch, stub = _stub(served.port)
    try:
        req = pb.GetEmbeddingsRequest(user_ids=served.ids[:10])
        assert len(stub.GetEmbeddings(req, timeout=5).statuses) == 10
        served.proxy.delay_s = 1.0  # calls now wait on the store: they are in flight
        r0 = served.proxy.requests
        futs = [stub.GetEmbeddings.future(req, timeout=10) for _ in range(20)]
        served.proxy.wait_requests(r0 + 8, timeout_s=10)  # the server is reading for them
        assert all(not f.done() for f in futs)
        proc.kill()  # SIGKILL mid-request
        t_kill = time.monotonic()
        ends = _ended(futs, timeout_s=5)
        proc.wait(timeout=10)
        codes = Counter(c for c, _ in ends)
        assert codes == Counter({grpc.StatusCode.UNAVAILABLE: 20}), codes
        assert max(t for _, t in ends) < 2.0  # told at once, not at their 10 s deadline

        served.proxy.delay_s = 0.0
        served.start()  # same port, fresh process

        def answers() -> bool:
            try:
                return len(stub.GetEmbeddings(req, timeout=1).statuses) == 10
            except grpc.RpcError:
                return False

        wait_for(answers, 60, "the restarted server to answer")
        recovery = time.monotonic() - t_kill
        resp = stub.GetEmbeddings(req, timeout=5)
        got = np.frombuffer(resp.vectors, "<f4").reshape(10, DIM)
        want = VectorStore(store_client).get_batch(served.ids[:10], VERSION)
        assert np.array_equal(got, np.stack([v[0].vector for v in want]))
    finally:
        ch.close()
        store_client.close()
    report(
        scenario="`persona serve` SIGKILLed with 20 GetEmbeddings in flight, restarted",
        produced=20,
        applied=0,
        duplicated=0,
        lost=0,
        recovery_s=round(recovery, 1),
        note="all 20 clients got UNAVAILABLE within"
        f" {max(t for _, t in ends):.2f} s of the kill; recovery = kill to first correct"
        " answer from the restarted process (mostly its start-up)",
    )


def _status(proc: subprocess.Popen[bytes], key: str) -> int:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {proc.pid}")


def test_slow_store_answers_within_deadline_or_fails_fast_and_in_flight_is_bounded(
    served: Served, report: Callable[..., None]
) -> None:
    proc = served.start("--store-timeout-ms", "200")
    ch, stub = _stub(served.port)
    req = pb.GetEmbeddingsRequest(user_ids=served.ids[:20])
    try:
        for _ in range(20):  # warm: connections open, version cached
            stub.GetEmbeddings(req, timeout=5)
        threads0, rss0 = _status(proc, "Threads"), rss_kb(proc.pid)
        # Steps 1-2: every store reply takes 2 s, so "ended before the store answered" has
        # 1.5 s of room for a loaded machine (a 0.6 s bound at 300 ms flaked at 0.75 s).
        served.proxy.delay_s = 2.0

        # 1. The client's deadline (100 ms) is shorter than the store: DEADLINE_EXCEEDED,
        #    at the deadline, not after the store answers.
        t0 = time.monotonic()
        short = _ended([stub.GetEmbeddings.future(req, timeout=0.1) for _ in range(30)], 5)
        assert {c for c, _ in short} == {grpc.StatusCode.DEADLINE_EXCEEDED}
        assert time.monotonic() - t0 < 1.5

        # 2. No client deadline: the server's own store timeout (200 ms) gives UNAVAILABLE.
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            stub.GetEmbeddings(req)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "did not answer within" in (ei.value.details() or "")
        no_deadline_s = time.monotonic() - t0
        assert no_deadline_s < 1.5
        served.proxy.delay_s = 0.3  # from here every store reply takes 300 ms

        # 3. A flood of 400 calls (3 s deadline) at a slow store: at most
        #    max_concurrent_rpcs (64) are taken at a time, the rest are refused at once with
        #    RESOURCE_EXHAUSTED; nothing queues without bound, threads and memory stay put.
        flood, sent_at, done_at = _flood(stub, req, 400, deadline_s=3.0)
        codes = Counter(c for c, _ in flood)
        allowed = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                   grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK}  # fmt: skip
        assert set(codes) <= allowed, codes
        refused = [i for i, (c, _) in enumerate(flood) if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert refused, codes
        assert max(done_at[i] - sent_at[i] for i in refused) < 1.0  # refused at once
        # An accepted call holds its slot for the store timeout (200 ms), so a burst that
        # reached the server over `span` seconds can see 64 accepted per 200 ms of it. (A
        # loaded machine can take longer than 200 ms to send 400 calls; a fixed count flaked.)
        span = max(done_at[i] for i in refused)
        accepted = len(flood) - len(refused)
        assert accepted <= 64 * (1 + int(span / 0.2)), (accepted, span, codes)
        assert max(t for _, t in flood) < 3.5  # every call ended by its deadline
        threads1, rss1 = _status(proc, "Threads"), rss_kb(proc.pid)
        assert threads1 <= threads0 + 40, (threads0, threads1)
        assert rss1 - rss0 < 50 * 1024, (rss0, rss1)

        # 4. The store heals: calls answer again without a restart. The replies the flood
        #    left queued in the proxy (each mid-sleep one still waits its 300 ms) drain
        #    first, so a call right after the heal can still meet the 200 ms store timeout
        #    on a loaded machine (seen in CI): the bound is on recovering, not on one call.
        served.proxy.delay_s = 0.0
        t_heal, answered = time.monotonic(), None
        while answered is None and time.monotonic() - t_heal < 10.0:
            try:
                answered = stub.GetEmbeddings(req, timeout=2)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.code()
                time.sleep(0.1)
        assert answered is not None and len(answered.statuses) == 20
        heal_s = time.monotonic() - t_heal
    finally:
        ch.close()
    sent = len(short) + 1 + len(flood)
    report(
        scenario="Slow store on the serving path (300 ms injected per Valkey reply)",
        produced=sent,
        applied=codes[grpc.StatusCode.OK],
        duplicated=0,
        lost=0,
        recovery_s=round(heal_s, 2),
        note=f"100 ms deadline: 30/30 DEADLINE_EXCEEDED by {max(t for _, t in short):.2f} s;"
        f" no deadline: UNAVAILABLE after {no_deadline_s:.2f} s (store timeout 200 ms);"
        f" flood of 400: {dict((k.name, v) for k, v in codes.items())}, last ended at"
        f" {max(t for _, t in flood):.2f} s; server threads {threads0}->{threads1},"
        f" RSS {rss0 // 1024}->{rss1 // 1024} MiB",
    )
