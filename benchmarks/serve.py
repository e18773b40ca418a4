"""Serving benchmark: GetEmbeddings (100 ids) beside a bare pipelined read of the same keys,
and FindLookalikes k=50 over a large index; prints a markdown table and the command.

    OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/serve.py \
        [--users 20000] [--lookalike-n 1000000] [--seconds 8]

Setup, all on loopback: the embedded 3-node Valkey cluster; `--users` vectors (dim 64,
float32) written with VectorStore. Rows:
- "bare read, redis-py pipeline": the issue's baseline, redis-py alone: `client.pipeline()`
  with one `LRANGE key 0 0` per id (keys made beforehand), raw bytes, no decoding. redis-py's
  cluster pipeline writes every shard's commands, then reads the replies shard by shard.
- "bare read, redis-py connections" (`serve_reads.py`): a leaner redis-py read of the same
  keys: a kept connection per shard, each shard's commands in one write, `read_response`.
- "StoreRouter.read_packed": the read GetEmbeddings does (`services/store/router.py`), the
  commands packed beforehand (`records.packed_lranges`): the same writes, routed with numpy,
  the replies parsed by one hiredis reader fed straight from each socket.
- "VectorStore.read_batch": StoreRouter.read_packed plus making the keys and decoding the
  records into arrays, as GetEmbeddings does.
- "GetEmbeddings without scores": a `persona serve --no-index` child process, called over
  gRPC from here (response decoded with one np.frombuffer). The users' records carry
  `N_SCORES` (50) outcome scores each (layout 2), as a scoring version's do.
- "GetEmbeddings with scores": the same requests with `include_scores` (the (100, 50)
  scores decoded too), in the same rounds; then the two alone, taking turns for
  2 x `--seconds` (neither always follows the same path), whose p50s and difference the notes
  give (issue #16: at most +0.2 ms).
- "GetModelInfo": the same server's cheapest call (answered from the version cache, no
  store read): what a Python gRPC round trip costs on this machine, for the decomposition.
The paired difference is GetEmbeddings minus the faster of the two bare redis-py reads, in
the same round.
- "Go front": the same GetEmbeddings through persona-front (front/go, `serve_front.py`)
  before the same server, which it answers from the store; skipped, saying why, without Go.
- "FindLookalikes": a server in a child process holding an IVF index (the index's "auto"
  choice) over `--lookalike-n` clustered unit vectors; queries are held-out vectors.
Latency: one call in flight, p50/p99 over `--seconds`. Sustained rate: `--concurrency`
calls in flight for `--seconds` (threads for the bare read, gRPC futures otherwise).
- Feast (`benchmarks/serve_feast.py`): GetEmbeddings beside Feast's in-process SDK and
  `feast serve` over the same ids, users and vectors, `--feast-rounds` rounds of `--seconds`
  a path taking turns, with the ratios of p50s; skipped with a message when the Feast
  virtualenv (`make bench-feast-env`) is absent. `--feast-only` runs just this section:

    .venv/bin/python benchmarks/serve.py --feast-only --users 20000 --seconds 4

Calls/s by serving processes (`persona serve --processes N`): `benchmarks/serve_processes.py`.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serve_feast
import serve_front
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc
from serve_common import (
    DIM,
    N_SCORES,
    VERSION,
    batches_of,
    future_rate,
    interleaved,
    latency,
    percentiles,
    threaded_rate,
    user_scores,
    user_vectors,
    write_users,
)
from serve_reads import LeanRedisPyRead

from services.stack import EmbeddedStack, StackConfig, free_ports
from services.store.client import connect
from services.store.records import packed_lranges, vector_key
from services.store.router import StoreRouter
from services.store.vectors import VectorStore

log = logging.getLogger("benchmarks.serve")


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


Row = tuple[str, str, float, float, float]  # path, request, p50 ms, p99 ms, sustained req/s
Getter = Callable[[int], object]
FRONT_ROW = "GetEmbeddings (gRPC, Go front persona-front before the same server)"


def read_rows(args: argparse.Namespace, client: Any, store: VectorStore,
              batches: list[list[str]], stub: Any, get: Callable[[int], object],
              get_scored: Callable[[int], object],
              front: tuple[Any, Getter] | None) -> tuple[list[Row], str]:  # fmt: skip
    """The store reads, GetEmbeddings and GetModelInfo, timed in turn; (rows, the notes).
    `front`: the Go front's stub and GetEmbeddings call (the last row), or None."""
    keys = [[vector_key(u, VERSION) for u in b] for b in batches]
    packs = [packed_lranges(b, VERSION, 0) for b in batches]
    router = StoreRouter(client)
    lean = LeanRedisPyRead(client, router)
    reqs = [pb.GetEmbeddingsRequest(user_ids=b) for b in batches]
    scored_reqs = [pb.GetEmbeddingsRequest(user_ids=b, include_scores=True) for b in batches]
    info_req = pb.GetModelInfoRequest()

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

    def info(i: int) -> object:
        return stub.GetModelInfo(info_req, timeout=5)

    names = (
        "bare read, redis-py pipeline (client.pipeline(), the baseline)",
        "bare read, redis-py connections (pipelined per shard, no threads)",
        "StoreRouter.read_packed (hiredis fed from the sockets, the service's read)",
        "VectorStore.read_batch (read_packed + keys + decode)",
        "GetEmbeddings without scores (gRPC, persona serve)",
        "GetModelInfo (gRPC, same server; no store read: the round trip's floor)",
        f"GetEmbeddings with scores (gRPC, include_scores, {N_SCORES} scores)",
        FRONT_ROW,
    )[: 8 if front else 7]
    fns = [pipeline, connections, scatter, decoded, get, info, get_scored]
    if front:
        fns.append(front[1])
    try:
        samples = interleaved(dict(zip(names, fns, strict=True)), 3 * args.seconds)
        pair = interleaved({"without": get, "with": get_scored}, 2 * args.seconds)
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
        rates.append(
            future_rate(
                lambda i: stub.GetEmbeddings.future(scored_reqs[i % 256], timeout=5),
                args.seconds,
                args.concurrency,
            )
        )
        if front:
            fstub = front[0]
            rates.append(future_rate(lambda i: fstub.GetEmbeddings.future(reqs[i % 256], timeout=5),
                                     args.seconds, args.concurrency))  # fmt: skip
    finally:
        router.close()
        lean.close()
    rows: list[Row] = []
    for name, rate in zip(names, rates, strict=True):
        req = "no arguments" if name == names[5] else f"{args.batch} ids"
        rows.append((name, req, *percentiles(samples[name]), rate))
    bare = np.minimum(np.asarray(samples[names[0]]), np.asarray(samples[names[1]]))
    paired_ms = float(np.median(np.asarray(samples[names[4]]) - bare)) * 1000
    bare_p50 = float(np.median(bare)) * 1000
    served = np.asarray(samples[names[4]]) - np.asarray(samples[names[5]])
    served_ms = float(np.median(served)) * 1000
    with_s, without_s = np.asarray(pair["with"]), np.asarray(pair["without"])
    scored_ms = float(np.median(with_s - without_s)) * 1000
    (with_p50, _), (without_p50, _) = percentiles(pair["with"]), percentiles(pair["without"])
    notes = (
        f"\nGetEmbeddings p50 minus the faster bare redis-py read's p50: "
        f"{rows[4][2] - bare_p50:+.2f} ms; median of paired differences (same round): "
        f"{paired_ms:+.2f} ms\n"
        f"GetEmbeddings minus GetModelInfo (paired): {served_ms:+.2f} ms, of which "
        f"VectorStore.read_batch p50 {rows[3][2]:.2f} ms\n"
        f"GetEmbeddings with scores p50 {with_p50:.2f} ms, without {without_p50:.2f} ms "
        f"(the two alone, taking turns, {len(pair['with'])} calls each): "
        f"{with_p50 - without_p50:+.2f} ms; median of paired differences: {scored_ms:+.2f} ms "
        f"(issue #16 target: at most +0.2 ms)"
    )
    if front:
        fr = float(np.median(np.asarray(samples[names[7]]) - bare)) * 1000
        notes += (f"\nGo front GetEmbeddings p50 minus the faster bare read's p50: "
                  f"{rows[7][2] - bare_p50:+.2f} ms; median of paired differences: {fr:+.2f} ms"
                  " (issue #19 target: at most +0.5 ms)")  # fmt: skip
    rows.insert(5, rows.pop(6))  # with scores beside without
    return rows, notes


def lookalike_row(args: argparse.Namespace, url: str, port: int) -> Row:
    """FindLookalikes k over an index of `--lookalike-n` vectors, served by a child."""
    log.info("building the lookalike index over %d vectors in a child", args.lookalike_n)
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    child = ctx.Process(target=lookalike_server, args=(url, args.lookalike_n, port, ready))
    child.start()
    try:
        build_s, kind = ready.get(timeout=1800)
        from services.index.synthetic import ClusteredSpec, clustered_unit_vectors

        _, queries = clustered_unit_vectors(1000, 2000, ClusteredSpec(dim=DIM))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            wait_healthy(ch, child.is_alive, 60)
            stub = service_pb2_grpc.UserEmbeddingServiceStub(ch)
            lreqs = [
                pb.FindLookalikesRequest(vector=pb.VectorQuery(values=q.tolist()), k=args.k)
                for q in queries
            ]

            def find(i: int) -> object:
                return stub.FindLookalikes(lreqs[i % len(lreqs)], timeout=5)

            p50, p99, _ = latency(find, args.seconds)
            rate = future_rate(
                lambda i: stub.FindLookalikes.future(lreqs[i % len(lreqs)], timeout=5),
                args.seconds,
                args.concurrency,
            )
    finally:
        child.terminate()
        child.join(20)
    label = f"k={args.k}, n={args.lookalike_n:,} ({kind}, built in {build_s:.0f} s)"
    return ("FindLookalikes (gRPC)", label, p50, p99, rate)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lookalike-n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--feast-python", type=Path, default=serve_feast.DEFAULT_PYTHON,
                   help="the Feast virtualenv's Python (`make bench-feast-env`)")  # fmt: skip
    p.add_argument("--feast-rounds", type=int, default=3, help="rounds of the Feast section")
    p.add_argument("--feast-only", action="store_true", help="only the Feast section")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows: list[Row] = []
    notes = feast = ""
    t_all = time.perf_counter()
    with EmbeddedStack(StackConfig(cluster=True)) as stack:
        url = stack.addresses.redis
        nodes = [n.removeprefix("redis://") for n in stack.addresses.redis_nodes]
        client = connect(url)
        store = VectorStore(client)
        ids, vecs = user_vectors(args.users)
        write_users(store, ids, vecs, N_SCORES)
        log.info("wrote %d users; measuring GetEmbeddings", args.users)
        batches = batches_of(ids, args.batch)
        port, lport = free_ports(2)
        cmd = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())",
               "serve", "--no-index", "--host", "127.0.0.1", "--port", str(port), "--redis", url,
               "--dim", str(DIM), "--bootstrap", stack.addresses.bootstrap]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                wait_healthy(ch, lambda: proc.poll() is None, 60)
                stub = service_pb2_grpc.UserEmbeddingServiceStub(ch)
                reqs = [pb.GetEmbeddingsRequest(user_ids=b) for b in batches]
                sreqs = [pb.GetEmbeddingsRequest(user_ids=b, include_scores=True) for b in batches]

                def get(i: int) -> np.ndarray:
                    r = stub.GetEmbeddings(reqs[i % 256], timeout=5)
                    return np.frombuffer(r.vectors, "<f4").reshape(len(r.statuses), r.dim)

                def get_scored(i: int) -> tuple[np.ndarray, np.ndarray]:
                    r = stub.GetEmbeddings(sreqs[i % 256], timeout=5)
                    n = len(r.statuses)
                    return (np.frombuffer(r.vectors, "<f4").reshape(n, r.dim),
                            np.frombuffer(r.scores, "<f4").reshape(n, r.n_scores))  # fmt: skip

                at = [{u: i for i, u in enumerate(ids)}[u] for u in batches[0]]
                got_v, got_s = get_scored(0)
                want_s = user_scores(len(ids), N_SCORES)[at]
                if not np.array_equal(get(0), vecs[at]) or not np.array_equal(got_v, vecs[at]):
                    raise RuntimeError("GetEmbeddings returned other vectors than were written")
                if not np.allclose(got_s, want_s, atol=1e-3):  # float16 in the store
                    raise RuntimeError("GetEmbeddings returned other scores than were written")
                front = serve_front.GoFront.start(port, nodes, DIM)
                fch = None if isinstance(front, str) else grpc.insecure_channel(front.address)
                try:
                    gets: dict[str, Callable[[int], object]] = {serve_feast.PERSONA: get}
                    fpair = None
                    if fch is not None:
                        fstub = service_pb2_grpc.UserEmbeddingServiceStub(fch)

                        def get_front(i: int) -> np.ndarray:
                            r = fstub.GetEmbeddings(reqs[i % 256], timeout=5)
                            return np.frombuffer(r.vectors, "<f4").reshape(len(r.statuses), r.dim)

                        get_front(0)  # forwarded: teaches the front the version has no head
                        if not np.array_equal(get_front(0), vecs[at]):
                            raise RuntimeError("the Go front returned other vectors than stored")
                        gets[serve_feast.FRONT], fpair = get_front, (fstub, get_front)
                    if not args.feast_only:
                        rows, notes = read_rows(args, client, store, batches, stub, get,
                                                get_scored, fpair)  # fmt: skip
                    if isinstance(front, str):
                        notes += f"\n{front}"
                    work = serve_feast.Workload(ids, vecs, batches)
                    feast = serve_feast.compare(gets, args.feast_python, nodes, work,
                                                args.feast_rounds, args.seconds)  # fmt: skip
                finally:
                    if fch is not None:
                        fch.close()
                    if not isinstance(front, str):
                        front.stop()
        finally:
            proc.terminate()
            proc.wait(20)
        if not args.feast_only:
            rows.append(lookalike_row(args, url, lport))
        store.close()
        client.close()

    print(
        f"\n{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), loopback, "
        f"3-node Valkey cluster, dim {DIM}, {args.users:,} users stored; "
        f"sustained = {args.concurrency} in flight"
    )
    if rows:
        print("\n| path | request | p50 ms | p99 ms | sustained req/s |")
        print("| --- | --- | ---: | ---: | ---: |")
        for name, req, p50, p99, rate in rows:
            print(f"| {name} | {req} | {p50:.2f} | {p99:.2f} | {rate:,.0f} |")
        print(notes)
    print(feast)
    cmd_line = shlex.join(["python", "benchmarks/serve.py", *(argv or sys.argv[1:])])
    print(f"\ncommand: `{cmd_line}` (total {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
