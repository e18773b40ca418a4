"""Serving benchmark: GetEmbeddings (100 ids) beside a bare pipelined read of the same keys,
and FindLookalikes k=50 over a large index; prints a markdown table and the command.

    OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/serve.py \
        [--users 20000] [--lookalike-n 1000000] [--seconds 8]

Setup, all on loopback: the embedded 3-node Valkey cluster; `--users` vectors (dim 64,
float32) written with VectorStore. Rows:
- "bare read, redis-py pipeline": the issue's baseline, redis-py alone: `client.pipeline()`
  with one `LRANGE key 0 0` per id (keys made beforehand), raw bytes, no decoding. redis-py's
  cluster pipeline writes every shard's commands, then reads the replies shard by shard.
- "bare read, redis-py connections": a leaner redis-py read of the same keys: one
  connection per shard kept, each shard's commands packed in one write, then
  `read_response` per reply (the service's read until session 4).
- "StoreRouter.read_packed": the read GetEmbeddings does (`services/store/router.py`), the
  commands packed beforehand (`records.packed_lranges`): the same writes, routed with numpy,
  the replies parsed by one hiredis reader fed straight from each socket.
- "VectorStore.read_batch": StoreRouter.read_packed plus making the keys and decoding the
  records into arrays, as GetEmbeddings does.
- "GetEmbeddings": a `persona serve --no-index` child process, called over gRPC from here
  (response decoded with one np.frombuffer).
- "GetModelInfo": the same server's cheapest call (answered from the version cache, no
  store read): what a Python gRPC round trip costs on this machine, for the decomposition.
The paired difference is GetEmbeddings minus the faster of the two bare redis-py reads, in
the same round.
- "FindLookalikes": a server in a child process holding an IVF index (the index's "auto"
  choice) over `--lookalike-n` clustered unit vectors; queries are held-out vectors.
Latency: one call in flight, p50/p99 over `--seconds`. Sustained rate: `--concurrency`
calls in flight for `--seconds` (threads for the bare read, gRPC futures otherwise).
- "processes": GetEmbeddings calls/s (`--batch` ids) from `persona serve --no-index
  --processes N` for each N of `--processes` (default 1,2), in the same run, and the ratio
  to the first. Load: `--clients` client processes, each with `--channels` connections of
  its own (the kernel's SO_REUSEPORT hash spreads connections over the members) and
  `--in-flight` calls outstanding on each (2 x 4 x 2 = 16 by default, within the server's
  64-call limit). Beside each rate, the cores each side used
  in the window (CPU seconds / wall seconds, from /proc): servers, clients, store + broker,
  calls per server core-second (flat when members scale per core; the rate then follows the
  cores the servers got), and each member's share of the calls. `--processes-only` runs
  just this section:

    .venv/bin/python benchmarks/serve.py --processes-only --users 20000 --seconds 8
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import platform
import queue
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from redis.crc import key_slot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc

from services.stack import EmbeddedStack, StackConfig, free_ports
from services.store.client import connect
from services.store.records import StoredVector, packed_lranges, vector_key
from services.store.router import StoreRouter
from services.store.vectors import VectorStore

log = logging.getLogger("benchmarks.serve")
VERSION, DIM = "vbench-1", 64


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def latency(call: Callable[[int], object], seconds: float) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, calls) of `call(i)`, one at a time, after 50 warm-up calls."""
    for i in range(50):
        call(i)
    out: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - t0)
        i += 1
    p50, p99 = percentiles(out)
    return p50, p99, len(out)


def interleaved(
    calls: dict[str, Callable[[int], object]], seconds: float
) -> dict[str, list[float]]:
    """Latency samples of each call, taken in turn (a, b, c, a, b, c, ...) so that all see
    the same machine load; 50 warm-up rounds first."""
    for i in range(50):
        for fn in calls.values():
            fn(i)
    out: dict[str, list[float]] = {name: [] for name in calls}
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn(i)
            out[name].append(time.perf_counter() - t0)
        i += 1
    return out


def threaded_rate(call: Callable[[int], object], seconds: float, threads: int) -> float:
    """Calls per second with `threads` threads calling back to back."""
    count = [0] * threads
    end = time.monotonic() + seconds

    def run(t: int) -> None:
        i = t
        while time.monotonic() < end:
            call(i)
            count[t] += 1
            i += threads

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(count) / (time.perf_counter() - t0)


def future_rate(submit: Callable[[int], Any], seconds: float, in_flight: int) -> float:
    """Calls per second keeping `in_flight` gRPC futures outstanding."""
    done = 0
    pending = [submit(i) for i in range(in_flight)]
    i = in_flight
    t0 = time.perf_counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        nxt = []
        for f in pending:
            f.result()
            done += 1
            nxt.append(submit(i))
            i += 1
        pending = nxt
    for f in pending:
        f.result()
        done += 1
    return done / (time.perf_counter() - t0)


class LeanRedisPyRead:
    """redis-py alone, lean: one kept connection per shard; every shard's LRANGEs packed by
    redis-py into one write, all shards written first, then `read_response` per reply."""

    def __init__(self, client: Any, router: StoreRouter) -> None:
        self.client = client
        self.router = router
        self.local = threading.local()  # .conns: node name -> connection, per thread
        self.taken: list[tuple[Any, Any]] = []  # (pool, connection), to give back

    def read(self, keys: list[bytes]) -> list[Any]:
        conns = getattr(self.local, "conns", None)
        if conns is None:
            conns = self.local.conns = {}
        groups: dict[str, list[bytes]] = {}
        slots = np.fromiter(map(key_slot, keys), np.int64, len(keys))
        for k, name in zip(keys, self.router.primary_names(slots), strict=True):
            groups.setdefault(name, []).append(k)
        sent = []
        for name, ks in groups.items():
            conn = conns.get(name)
            if conn is None:
                pool = self.client.get_redis_connection(
                    self.client.get_node(node_name=name)
                ).connection_pool
                conn = conns[name] = pool.get_connection()
                self.taken.append((pool, conn))
            conn.send_packed_command(conn.pack_commands([("LRANGE", k, 0, 0) for k in ks]))
            sent.append((conn, len(ks)))
        return [conn.read_response() for conn, n in sent for _ in range(n)]

    def close(self) -> None:
        for pool, conn in self.taken:
            pool.release(conn)


def write_users(store: VectorStore, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    ids = [f"user-{i}" for i in range(n)]
    now = int(time.time() * 1000)
    for lo in range(0, n, 2000):
        vecs = rng.standard_normal((min(2000, n - lo), DIM)).astype(np.float32)
        store.put_batch(
            [StoredVector(u, VERSION, v, now, 10, 1) for u, v in zip(ids[lo:], vecs, strict=False)]
        )
    store.set_active(VERSION)
    return ids


def lookalike_server(redis_url: str, n: int, port: int, ready: Any) -> None:
    """Child process: builds the index over n clustered vectors and serves until killed."""
    from prometheus_client import CollectorRegistry

    from services.index import IndexConfig
    from services.index.holder import IndexHolder, ServedIndex
    from services.index.prior import PriorIndex
    from services.index.synthetic import ClusteredSpec, clustered_unit_vectors
    from services.serving.config import ServeConfig
    from services.serving.metrics import serving_metrics
    from services.serving.server import ServingServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    base, _ = clustered_unit_vectors(n, 0, ClusteredSpec(dim=DIM))
    t0 = time.perf_counter()
    index = PriorIndex(IndexConfig(dim=DIM, gpu="off"))
    for lo in range(0, n, 100_000):
        index.upsert([f"l{i}" for i in range(lo, min(n, lo + 100_000))], base[lo : lo + 100_000])
    info = index.rebuild()
    build_s = time.perf_counter() - t0
    store = VectorStore(connect(redis_url))
    cfg = ServeConfig(host="127.0.0.1", port=port, dim=DIM, workers=8)
    server = ServingServer(cfg, store, IndexHolder(ServedIndex(VERSION, index)),
                           serving_metrics(CollectorRegistry()))  # fmt: skip
    server.start()
    ready.put((build_s, info.kind))
    server.wait()


def wait_healthy(channel: grpc.Channel, proc_alive: Callable[[], bool], timeout_s: float) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc_alive():
            raise RuntimeError("server process exited")
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                return
        except grpc.RpcError:
            time.sleep(0.2)
    raise TimeoutError("server not healthy")


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
    args: argparse.Namespace, url: str, batches: list[list[str]], stack_pids: list[int]
) -> list[tuple[int, float, float, float, float, str]]:
    """(processes, calls/s, server cores, client cores, store cores, member shares) per N."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from prometheus_client.parser import text_string_to_metric_families

    ctx = mp.get_context("spawn")
    out = []
    for n in [int(x) for x in args.processes.split(",")]:
        port, mport = free_ports(2)
        cmd = [sys.executable, "-m", "services.cli", "serve", "--no-index", "--processes",
               str(n), "--host", "127.0.0.1", "--port", str(port), "--redis", url, "--dim",
               str(DIM), "--metrics-port", str(mport)]  # fmt: skip
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
    p.add_argument("--lookalike-n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--processes", default="1,2", help="serving process counts to compare")
    p.add_argument("--clients", type=int, default=2, help="load processes (processes section)")
    p.add_argument("--channels", type=int, default=4, help="connections per load process")
    p.add_argument("--in-flight", type=int, default=2, help="calls in flight per connection")
    p.add_argument("--processes-only", action="store_true", help="only the processes section")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows: list[tuple[str, str, float, float, float]] = []
    t_all = time.perf_counter()
    with EmbeddedStack(StackConfig(cluster=True)) as stack:
        url = stack.addresses.redis
        client = connect(url)
        store = VectorStore(client)
        ids = write_users(store, args.users)
        log.info("wrote %d users; measuring GetEmbeddings beside the bare read", args.users)
        rng = np.random.default_rng(1)
        batches = [list(rng.choice(ids, args.batch, replace=False)) for _ in range(256)]
        keys = [[vector_key(u, VERSION) for u in b] for b in batches]
        scaling = process_scaling(args, url, batches, stack.pids())
        if args.processes_only:
            store.close()
            client.close()
            print_scaling(scaling, args)
            cmd_line = shlex.join(["python", "benchmarks/serve.py", *(argv or sys.argv[1:])])
            print(f"\ncommand: `{cmd_line}` (total {time.perf_counter() - t_all:.0f} s)")
            return 0

        packs = [packed_lranges(b, VERSION, 0) for b in batches]
        router = StoreRouter(client)
        lean = LeanRedisPyRead(client, router)

        def pipeline(i: int) -> object:
            pipe = client.pipeline()
            for k in keys[i % 256]:
                pipe.lrange(k, 0, 0)
            return pipe.execute()

        def connections(i: int) -> object:
            return lean.read(keys[i % 256])

        def scatter(i: int) -> object:
            return router.read_packed(*packs[i % 256], time.monotonic() + 5)

        def decoded(i: int) -> object:
            return store.read_batch(batches[i % 256], VERSION, 1, time.monotonic() + 5)

        what = f"{args.batch} ids"
        port, lport = free_ports(2)
        cmd = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())",
               "serve", "--no-index", "--host", "127.0.0.1", "--port", str(port), "--redis", url,
               "--dim", str(DIM)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                wait_healthy(ch, lambda: proc.poll() is None, 60)
                stub = service_pb2_grpc.UserEmbeddingServiceStub(ch)
                reqs = [pb.GetEmbeddingsRequest(user_ids=b) for b in batches]

                def get(i: int) -> object:
                    r = stub.GetEmbeddings(reqs[i % 256], timeout=5)
                    return np.frombuffer(r.vectors, "<f4").reshape(len(r.statuses), r.dim)

                info_req = pb.GetModelInfoRequest()

                def info(i: int) -> object:
                    return stub.GetModelInfo(info_req, timeout=5)

                names = (
                    "bare read, redis-py pipeline (client.pipeline(), the baseline)",
                    "bare read, redis-py connections (pipelined per shard, no threads)",
                    "StoreRouter.read_packed (hiredis fed from the sockets, the service's read)",
                    "VectorStore.read_batch (read_packed + keys + decode)",
                    "GetEmbeddings (gRPC, persona serve)",
                    "GetModelInfo (gRPC, same server; no store read: the round trip's floor)",
                )
                fns = (pipeline, connections, scatter, decoded, get, info)
                samples = interleaved(dict(zip(names, fns, strict=True)), 3 * args.seconds)
                rates = [threaded_rate(f, args.seconds, args.concurrency) for f in fns[:4]]
                rates.append(
                    future_rate(
                        lambda i: stub.GetEmbeddings.future(reqs[i % 256], timeout=5),
                        args.seconds,
                        args.concurrency,
                    )
                )
                rates.append(
                    future_rate(
                        lambda i: stub.GetModelInfo.future(info_req, timeout=5),
                        args.seconds,
                        args.concurrency,
                    )
                )
                for name, rate in zip(names, rates, strict=True):
                    req = "no arguments" if name == names[5] else what
                    rows.append((name, req, *percentiles(samples[name]), rate))
                bare = np.minimum(np.asarray(samples[names[0]]), np.asarray(samples[names[1]]))
                diff = np.asarray(samples[names[4]]) - bare
                paired_ms = float(np.median(diff)) * 1000
                bare_p50 = float(np.median(bare)) * 1000
                served = np.asarray(samples[names[4]]) - np.asarray(samples[names[5]])
                served_ms = float(np.median(served)) * 1000
        finally:
            router.close()
            lean.close()
            proc.terminate()
            proc.wait(20)

        log.info("building the lookalike index over %d vectors in a child", args.lookalike_n)
        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        child = ctx.Process(target=lookalike_server, args=(url, args.lookalike_n, lport, ready))
        child.start()
        try:
            build_s, kind = ready.get(timeout=1800)
            from services.index.synthetic import ClusteredSpec, clustered_unit_vectors

            _, queries = clustered_unit_vectors(1000, 2000, ClusteredSpec(dim=DIM))
            with grpc.insecure_channel(f"127.0.0.1:{lport}") as ch:
                wait_healthy(ch, child.is_alive, 60)
                stub2 = service_pb2_grpc.UserEmbeddingServiceStub(ch)
                lreqs = [
                    pb.FindLookalikesRequest(vector=pb.VectorQuery(values=q.tolist()), k=args.k)
                    for q in queries
                ]

                def find(i: int) -> object:
                    return stub2.FindLookalikes(lreqs[i % len(lreqs)], timeout=5)

                p50, p99, _ = latency(find, args.seconds)
                rate = future_rate(
                    lambda i: stub2.FindLookalikes.future(lreqs[i % len(lreqs)], timeout=5),
                    args.seconds,
                    args.concurrency,
                )
                label = f"k={args.k}, n={args.lookalike_n:,} ({kind}, built in {build_s:.0f} s)"
                rows.append(("FindLookalikes (gRPC)", label, p50, p99, rate))
        finally:
            child.terminate()
            child.join(20)
        store.close()
        client.close()

    print(
        f"\n{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), loopback, "
        f"3-node Valkey cluster, dim {DIM}, {args.users:,} users stored; "
        f"sustained = {args.concurrency} in flight"
    )
    print("\n| path | request | p50 ms | p99 ms | sustained req/s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, req, p50, p99, rate in rows:
        print(f"| {name} | {req} | {p50:.2f} | {p99:.2f} | {rate:,.0f} |")
    print(
        f"\nGetEmbeddings p50 minus the faster bare redis-py read's p50: "
        f"{rows[4][2] - bare_p50:+.2f} ms; median of paired differences (same round): "
        f"{paired_ms:+.2f} ms"
    )
    print(
        f"GetEmbeddings minus GetModelInfo (paired): {served_ms:+.2f} ms, of which "
        f"VectorStore.read_batch p50 {rows[3][2]:.2f} ms"
    )
    print_scaling(scaling, args)
    cmd_line = shlex.join(["python", "benchmarks/serve.py", *(argv or sys.argv[1:])])
    print(f"\ncommand: `{cmd_line}` (total {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
