"""Load test: GetEmbeddings at rising open-loop rates until p99 passes its objective (the
knee), then twice the knee to show the server sheds load with bounded memory and latency.

    OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/load.py \
        [--objective-ms 50] [--step-s 2] [--batch 20]

Loopback only: the embedded single-node Valkey, `--users` vectors (dim 8) written with
VectorStore, a `persona serve --no-index` child process (its defaults: 16 handler threads,
at most 256 concurrent RPCs, beyond which gRPC answers RESOURCE_EXHAUSTED). The load is
open loop (calls are sent on a schedule, not when the previous one returns), so queueing
at the server shows up as latency or refusals instead of slowing the sender. Every call
carries a deadline (`--deadline-ms`). The same pieces are used by tests/faults/test_load.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc

from services.stack import EmbeddedStack, StackConfig, free_ports
from services.store.client import connect
from services.store.records import StoredVector
from services.store.vectors import VectorStore

log = logging.getLogger("benchmarks.load")
VERSION, DIM = "vload-1", 8
PERSONA = [sys.executable, "-m", "services.cli"]
ROOT = Path(__file__).resolve().parents[1]


# ----- processes -------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_serve(
    redis_url: str, port: int, log_path: Path, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """`persona serve --no-index` on 127.0.0.1:`port`, logging to `log_path`."""
    argv = [*PERSONA, "serve", "--no-index", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--redis", redis_url, "--dim", str(DIM), "--grace-s", "0.5", *extra]
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def wait_serving(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Poll the health service until SERVING; returns the seconds it took."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    t0 = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"persona serve exited with {proc.returncode}")
            try:
                st = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status
                if st == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - t0
            except grpc.RpcError:
                pass
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"persona serve not SERVING after {timeout_s} s")
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def write_users(store: VectorStore, n: int, seed: int = 0) -> list[str]:
    """`n` users with random vectors under VERSION, made active."""
    rng = np.random.default_rng(seed)
    ids = [f"ld{i:06d}" for i in range(n)]
    now = time.time_ns() // 1_000_000
    for k in range(0, n, 2000):
        chunk = ids[k : k + 2000]
        vecs = rng.normal(size=(len(chunk), DIM)).astype(np.float32)  # (B, D)
        rows = zip(chunk, vecs, strict=True)
        store.put_batch([StoredVector(u, VERSION, v, now, 10, 1) for u, v in rows])
    store.set_active(VERSION)
    return ids


# ----- open-loop load --------------------------------------------------------------------


@dataclass
class Step:
    """One rate step: what was offered, how each call ended, latency of the OK calls."""

    rate: float
    seconds: float
    sent: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    ok_latency_s: list[float] = field(default_factory=list)
    max_in_flight: int = 0

    @property
    def ok(self) -> int:
        return self.codes["OK"]

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    def p(self, q: float) -> float:
        """Latency percentile `q` of the OK calls, in ms (inf when none succeeded)."""
        if not self.ok_latency_s:
            return float("inf")
        return float(np.percentile(np.asarray(self.ok_latency_s) * 1000.0, q))

    def row(self) -> str:
        shed = ", ".join(f"{k} {v}" for k, v in sorted(self.codes.items()) if k != "OK")
        return (
            f"| {self.rate:,.0f} | {self.sent / self.seconds:,.0f} | {self.ok / self.seconds:,.0f}"
            f" | {self.p(50):.1f} | {self.p(99):.1f} | {self.max_in_flight} | {shed or '-'} |"
        )


TABLE_HEAD = (
    "| offered /s | sent /s | OK /s | p50 ms | p99 ms | max in flight (client) | refused |\n"
    "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"
)


@contextmanager
def serving_users(
    stack: EmbeddedStack, users: int
) -> Iterator[tuple[service_pb2_grpc.UserEmbeddingServiceStub, list[str], subprocess.Popen[bytes]]]:
    """`users` stored vectors and a `persona serve` child over them: (stub, ids, process)."""
    client = connect(stack.addresses.redis)
    try:
        ids = write_users(VectorStore(client), users)
    finally:
        client.close()
    [port] = free_ports(1)
    proc = start_serve(stack.addresses.redis, port, stack.workdir / "serve.log")
    try:
        wait_serving(port, proc, 60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield service_pb2_grpc.UserEmbeddingServiceStub(ch), ids, proc
    finally:
        stop_process(proc)


def run_step(
    stub: service_pb2_grpc.UserEmbeddingServiceStub,
    requests: Sequence[pb.GetEmbeddingsRequest],
    rate: float,
    seconds: float,
    deadline_s: float,
) -> Step:
    """Send `rate` calls a second for `seconds` on a fixed schedule (gRPC futures, so the
    sender never waits for an answer), then wait for every call to end (each has a
    deadline, so this wait is bounded)."""
    step = Step(rate, seconds)
    lock = threading.Lock()
    in_flight = 0
    done = threading.Semaphore(0)
    n = max(1, int(rate * seconds))
    t0 = time.perf_counter()

    def finished(fut: grpc.Future, sent_at: float) -> None:
        nonlocal in_flight
        code = fut.code()
        dt = time.perf_counter() - sent_at
        with lock:
            in_flight -= 1
            step.codes[code.name] += 1
            if code == grpc.StatusCode.OK:
                step.ok_latency_s.append(dt)
        done.release()

    for i in range(n):
        due = t0 + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # pacing the schedule, not waiting for a condition
        sent_at = time.perf_counter()
        fut = stub.GetEmbeddings.future(requests[i % len(requests)], timeout=deadline_s)
        with lock:
            in_flight += 1
            step.max_in_flight = max(step.max_in_flight, in_flight)
        fut.add_done_callback(lambda f, s=sent_at: finished(f, s))
        step.sent += 1
    for _ in range(n):
        if not done.acquire(timeout=deadline_s + 10):
            raise TimeoutError("a call outlived its deadline by 10 s")
    return step


def requests_for(ids: Sequence[str], batch: int, seed: int = 1) -> list[pb.GetEmbeddingsRequest]:
    rng = np.random.default_rng(seed)
    return [
        pb.GetEmbeddingsRequest(user_ids=list(rng.choice(ids, batch, replace=False)))
        for _ in range(256)
    ]


@dataclass
class KneeResult:
    knee: float  # highest offered rate whose p99 met the objective with no refusals
    steps: list[Step]


def find_knee(
    stub: service_pb2_grpc.UserEmbeddingServiceStub,
    requests: Sequence[pb.GetEmbeddingsRequest],
    rates: Sequence[float],
    objective_ms: float,
    step_s: float,
    deadline_s: float,
) -> KneeResult:
    """Step through `rates` until a step misses the objective (p99 of OK calls above
    `objective_ms`, or more than 0.1 % of calls not OK) twice running; the knee is the
    step before. A step that misses once is run again: on a shared machine one stall (a
    neighbour's burst, a GC pause) can sink a short step far below capacity."""
    knee, steps = 0.0, []
    for rate in rates:
        for _attempt in range(2):
            s = run_step(stub, requests, rate, step_s, deadline_s)
            steps.append(s)
            log.info("rate %.0f: p99 %.1f ms, %d not OK of %d", rate, s.p(99), s.errors, s.sent)
            missed = s.p(99) > objective_ms or s.errors > 0.001 * s.sent
            if not missed:
                break
        if missed:
            break
        knee = rate
    return KneeResult(knee, steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--objective-ms", type=float, default=50.0)
    p.add_argument("--step-s", type=float, default=2.0)
    p.add_argument("--deadline-ms", type=float, default=1000.0)
    p.add_argument(
        "--rates", default="100,200,400,600,800,1000,1200,1500,1800,2200,2600,3000,3500,4000"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    rates = [float(r) for r in args.rates.split(",")]
    with (
        EmbeddedStack(StackConfig(cluster=False)) as stack,
        serving_users(stack, args.users) as (stub, ids, proc),
    ):
        reqs = requests_for(ids, args.batch)
        deadline = args.deadline_ms / 1000
        run_step(stub, reqs, 100, 1.0, deadline)  # warm-up
        res = find_knee(stub, reqs, rates, args.objective_ms, args.step_s, deadline)
        rss0 = rss_kb(proc.pid)
        over = run_step(stub, reqs, 2 * max(res.knee, rates[0]), 2 * args.step_s, deadline)
        rss1 = rss_kb(proc.pid)
    print(
        f"\nGetEmbeddings ({args.batch} ids), objective p99 <= {args.objective_ms:.0f} ms,"
        f" deadline {args.deadline_ms:.0f} ms, {os.cpu_count()} cores; knee {res.knee:,.0f}/s\n"
    )
    print(TABLE_HEAD)
    for s in res.steps:
        print(s.row())
    print(over.row() + " (2x knee)")
    print(f"\nserver RSS {rss0 / 1024:.0f} MiB before the 2x step, {rss1 / 1024:.0f} MiB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
