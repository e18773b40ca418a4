"""Serving processes benchmark: GetEmbeddings calls/s from `persona serve --no-index
--processes N` for each N of `--processes` (default 1,2), in the same run, and the ratio to
the first.

    OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python \
        benchmarks/serve_processes.py [--users 20000] [--seconds 8]

Setup, all on loopback: the embedded 3-node Valkey cluster; `--users` vectors (dim 64,
float32) written with VectorStore. Load: `--clients` client processes, each with
`--channels` connections of its own (the kernel's SO_REUSEPORT hash spreads connections over
the members) and `--in-flight` calls outstanding on each (2 x 4 x 2 = 16 by default, within
the server's 64-call limit), `--batch` ids a call. Beside each rate, the cores each side used
in the window (CPU seconds / wall seconds, from /proc): servers, clients, store + broker,
calls per server core-second (flat when members scale per core; the rate then follows the
cores the servers got), and each member's share of the calls.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import queue
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc
from serve_common import DIM, batches_of, user_vectors, write_users

from services.stack import EmbeddedStack, StackAddresses, StackConfig, free_ports
from services.store.client import connect
from services.store.vectors import VectorStore

log = logging.getLogger("benchmarks.serve_processes")


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def _load_client(port: int, batches: list[list[str]], seconds: float, channels: int,
                 in_flight: int, go: Any, out: Any) -> None:  # fmt: skip
    """Child process: GetEmbeddings futures over `channels` connections of its own, each
    with `in_flight` calls outstanding, for `seconds` after `go` is set; puts (calls, cpu)."""
    opts = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) for _ in range(channels)]
    stubs = [service_pb2_grpc.UserEmbeddingServiceStub(c) for c in chans]
    reqs = [pb.GetEmbeddingsRequest(user_ids=b) for b in batches]
    for s in stubs:
        s.GetEmbeddings(reqs[0], timeout=30)  # connected before the clock starts
    go.wait()
    cpu0 = time.process_time()
    slots = [(s, j) for s in stubs for j in range(in_flight)]
    n = 0
    end = time.monotonic() + seconds
    pending = [s.GetEmbeddings.future(reqs[j % len(reqs)], timeout=10) for s, j in slots]
    while time.monotonic() < end:
        for k, f in enumerate(pending):
            f.result()
            n += 1
            pending[k] = slots[k][0].GetEmbeddings.future(reqs[n % len(reqs)], timeout=10)
    for f in pending:
        f.result()
        n += 1
    out.put((n, time.process_time() - cpu0))
    for c in chans:
        c.close()


def process_scaling(
    args: argparse.Namespace, addr: StackAddresses, batches: list[list[str]], stack_pids: list[int]
) -> list[tuple[int, float, float, float, float, str]]:
    """(processes, calls/s, server cores, client cores, store cores, member shares) per N."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from prometheus_client.parser import text_string_to_metric_families

    ctx = mp.get_context("spawn")
    out = []
    for n in [int(x) for x in args.processes.split(",")]:
        port, mport = free_ports(2)
        cmd = [sys.executable, "-m", "services.cli", "serve", "--no-index", "--processes",
               str(n), "--host", "127.0.0.1", "--port", str(port), "--redis", addr.redis, "--dim",
               str(DIM), "--metrics-port", str(mport), "--bootstrap", addr.bootstrap]  # fmt: skip
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            opts = [("grpc.use_local_subchannel_pool", 1)]
            req = health_pb2.HealthCheckRequest(service="persona.v1.UserEmbeddingService")
            deadline = time.monotonic() + 120
            while True:  # SERVING on one member means all are ready (processes.py)
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"persona serve --processes {n} did not become ready")
                with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
                    try:
                        if health_pb2_grpc.HealthStub(ch).Check(req, timeout=2).status == 1:
                            break
                    except grpc.RpcError:
                        pass
                time.sleep(0.2)
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            servers = [proc.pid, *(int(x) for x in kids)]  # 1 process: the parent serves
            go, q = ctx.Event(), ctx.Queue()
            load = (port, batches, args.seconds, args.channels, args.in_flight, go, q)
            clients = [ctx.Process(target=_load_client, args=load) for _ in range(args.clients)]
            for c in clients:
                c.start()
            time.sleep(3.0)  # the clients connect and warm up before the window opens
            s0, v0, t0 = _cpu_s(servers), _cpu_s(stack_pids), time.perf_counter()
            go.set()
            results: list[tuple[int, float]] = []
            while len(results) < len(clients):  # a client that failed fails the run
                with contextlib.suppress(queue.Empty):
                    results.append(q.get(timeout=1.0))
                if any(c.exitcode not in (None, 0) for c in clients):
                    raise RuntimeError("a load client failed (its traceback is above)")
            wall = time.perf_counter() - t0
            s1, v1 = _cpu_s(servers), _cpu_s(stack_pids)
            for c in clients:
                c.join(30)
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
                text = r.read().decode()
            per = {
                s.labels.get("process", "0"): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "persona_serving_requests_total"
                and s.labels.get("method") == "GetEmbeddings"
            }
            total = sum(per.values()) or 1.0
            shares = "/".join(f"{per[k] / total:.0%}" for k in sorted(per)) or "100%"
            calls = sum(r[0] for r in results)
            client_cpu = sum(r[1] for r in results)
            out.append((n, calls / wall, (s1 - s0) / wall, client_cpu / wall, (v1 - v0) / wall,
                        shares))  # fmt: skip
            log.info("%d process(es): %.0f calls/s", n, calls / wall)
        finally:
            proc.terminate()
            proc.wait(60)
    return out


def print_scaling(rows: list[tuple[int, float, float, float, float, str]], args: Any) -> None:
    print(f"\nGetEmbeddings ({args.batch} ids) by serving processes; {args.clients} client"
          f" processes x {args.channels} connections x {args.in_flight} in flight")  # fmt: skip
    print("\n| processes | calls/s | servers' cores | calls per server core-second |"
          " clients' cores | store+broker cores | calls per member |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for n, rate, sc, cc, vc, shares in rows:
        per_core = rate / sc if sc > 0 else float("nan")
        print(f"| {n} | {rate:,.0f} | {sc:.2f} | {per_core:,.0f} | {cc:.2f} | {vc:.2f} |"
              f" {shares} |")  # fmt: skip
    for n, rate, *_ in rows[1:]:
        print(f"\n{n} processes / {rows[0][0]}: {rate / rows[0][1]:.2f}x calls/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--processes", default="1,2", help="serving process counts to compare")
    p.add_argument("--clients", type=int, default=2, help="load processes")
    p.add_argument("--channels", type=int, default=4, help="connections per load process")
    p.add_argument("--in-flight", type=int, default=2, help="calls in flight per connection")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t_all = time.perf_counter()
    with EmbeddedStack(StackConfig(cluster=True)) as stack:
        client = connect(stack.addresses.redis)
        store = VectorStore(client)
        ids, vecs = user_vectors(args.users)
        write_users(store, ids, vecs)
        store.close()
        client.close()
        log.info("wrote %d users; GetEmbeddings calls/s by serving processes", args.users)
        rows = process_scaling(args, stack.addresses, batches_of(ids, args.batch), stack.pids())
    print_scaling(rows, args)
    cmd_line = shlex.join(["python", "benchmarks/serve_processes.py", *(argv or sys.argv[1:])])
    print(f"\ncommand: `{cmd_line}` (total {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
