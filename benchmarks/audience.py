"""Audiences by propensity: how long a whole threshold audience takes to stream out of
`persona serve` (GetAudience, page after page), beside a lean read of the same sorted sets.

Setup, all on loopback: the embedded 3-node Valkey cluster; `--users` users written the way
the refresher writes them (`VectorStore.write`: layout-2 records with 50 scores, which also
fill the per-bucket audience sets); `persona serve` in its own process.

Rows, each the median of `--rounds`, in the same run:
- GetAudience threshold: every page (page size `--page`) of the audience at `--min-score`;
- GetAudience top N: the `--top` best users (two reads for the N-th best score, then the pages);
- lean read (baseline): the same members read straight from the cluster with redis-py,
  1024 `ZRANGE ... BYSCORE WITHSCORES` pipelined, no paging, no gRPC.
Issue #16 target: a 100k-user threshold audience streams out in under 2 s.

    .venv/bin/python benchmarks/audience.py --users 100000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time

import grpc
import numpy as np
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc

from services.stack import EmbeddedStack, StackConfig, free_ports
from services.store import layout
from services.store.audience import audience_key
from services.store.client import connect
from services.store.records import StoredVector
from services.store.vectors import UserWrite, VectorStore

log = logging.getLogger("bench.audience")
VERSION, DIM, N_SCORES, HORIZON = "vbench-audience", 64, 50, 86_400_000


def put(store: VectorStore, version: str, vecs: np.ndarray, scores: np.ndarray | None) -> float:
    """Write every row as the refresher does (batches of 2000); returns the seconds."""
    now, t0 = int(time.time() * 1000), time.perf_counter()
    for lo in range(0, len(vecs), 2000):
        store.write([UserWrite(f"u{i:07d}", [StoredVector(
            f"u{i:07d}", version, vecs[i], now, 10, 1, None if scores is None else scores[i])])
            for i in range(lo, min(len(vecs), lo + 2000))])  # fmt: skip
    return time.perf_counter() - t0


def columns(audience: int) -> str:
    """The bench version's 50 columns, the first `audience` of them in audience sets."""
    cols = [{"outcome": f"type=t{j // 5}", "horizon_ms": HORIZON * (1 + j % 5),
             "calibrated": True, "audience": j < audience} for j in range(N_SCORES)]  # fmt: skip
    return json.dumps({"columns": cols})


def used_memory(store: VectorStore) -> int:
    """Bytes the cluster's nodes use (INFO memory, summed over the primaries)."""
    info = store.client.info("memory")
    per_node = info.values() if isinstance(next(iter(info.values())), dict) else [info]
    return sum(int(v["used_memory"]) for v in per_node)


def write_cost(store: VectorStore, n: int) -> list[tuple[float, float]]:
    """(seconds, store bytes per user) to write n users: without scores; with 50 scores, 5
    of them in audience sets (one outcome at 5 horizons, as the default "(any)"); with all
    50 in them (PERSONA_REFRESH_AUDIENCES=all)."""
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    scores = rng.random((n, N_SCORES)).astype(np.float32)
    store.set_score_columns("vbench-five", columns(5))
    out = []
    for ver, sc in (("vbench-plain", None), ("vbench-five", scores), ("vbench-all", scores)):
        before = used_memory(store)
        out.append((put(store, ver, vecs, sc), (used_memory(store) - before) / n))
    return out


def write(store: VectorStore, n: int) -> np.ndarray:
    """n users, column 0 of their scores uniform in [0, 1]; returns those (n,)."""
    rng = np.random.default_rng(0)
    scores = rng.random((n, N_SCORES)).astype(np.float32)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    put(store, VERSION, vecs, scores)
    store.set_score_columns(VERSION, columns(N_SCORES))
    store.set_active(VERSION)
    return scores[:, 0].astype(np.float16).astype(np.float32)


def stream(stub: service_pb2_grpc.UserEmbeddingServiceStub, page: int, top: int = 0,
           min_score: float = 0.0) -> int:  # fmt: skip
    n, token = 0, ""
    while True:
        req = pb.GetAudienceRequest(outcome="type=t0", horizon_ms=HORIZON, page_size=page,
                                    page_token=token)  # fmt: skip
        if top:
            req.top_n = top
        else:
            req.min_score = min_score
        r = stub.GetAudience(req, timeout=30)
        n += len(r.user_ids)
        if not (token := r.next_page_token):
            return n


def lean(client: object, min_score: float) -> int:
    keys = [audience_key(b, VERSION, 0) for b in range(layout.BUCKETS)]
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for k in keys:
        pipe.zrangebyscore(k, min_score, "+inf", withscores=True)
    return sum(len(r) for r in pipe.execute())


def timed(fn: object, rounds: int) -> tuple[float, int]:
    times, got = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        got = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--min-score", type=float, default=0.0, help="0.0: every user")
    p.add_argument("--page", type=int, default=10_000)
    p.add_argument("--top", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--write-users", type=int, default=20_000, help="for the write-cost row")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with EmbeddedStack(StackConfig(cluster=True)) as stack:
        url = stack.addresses.redis
        client = connect(url)
        store = VectorStore(client)
        costs = write_cost(store, args.write_users)
        t0 = time.perf_counter()
        col0 = write(store, args.users)
        log.info("wrote %d users in %.1f s", args.users, time.perf_counter() - t0)
        (port,) = free_ports(1)
        cmd = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())",
               "serve", "--no-index", "--host", "127.0.0.1", "--port", str(port), "--redis", url,
               "--dim", str(DIM), "--bootstrap", stack.addresses.bootstrap]  # fmt: skip
        env = {**os.environ, "PERSONA_SERVED_LOG_RATE": "0"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                grpc.channel_ready_future(ch).result(timeout=60)
                stub = service_pb2_grpc.UserEmbeddingServiceStub(ch)
                want = int((col0 >= args.min_score).sum())
                rows = []
                for name, fn in (
                    ("GetAudience threshold", lambda: stream(stub, args.page, 0, args.min_score)),
                    ("GetAudience top N", lambda: stream(stub, args.page, args.top)),
                    ("lean read (baseline)", lambda: lean(client, args.min_score)),
                ):  # fmt: skip
                    for _ in range(30):  # the server may still be starting its handlers
                        try:
                            fn()
                            break
                        except grpc.RpcError:
                            time.sleep(1)
                    rows.append((name, *timed(fn, args.rounds)))
        finally:
            proc.terminate()
            proc.wait(20)
        store.close()
        client.close()
    if rows[0][2] != want or rows[2][2] != want or rows[1][2] != args.top:
        raise RuntimeError(f"audience sizes {[r[2] for r in rows]}, expected {want} / {args.top}")
    print(f"\n{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), loopback, "
          f"3-node Valkey cluster, {args.users:,} users, page {args.page:,}")  # fmt: skip
    print("\n| read | users | median s | x lean read |\n| --- | ---: | ---: | ---: |")
    for name, secs, n in rows:
        print(f"| {name} | {n:,} | {secs:.3f} | {secs / rows[2][1]:.2f} |")
    print(
        f"\nrefresher store write, {args.write_users:,} users in batches of 2,000:\n\n"
        "| records | s | x no scores | store bytes per user |\n| --- | ---: | ---: | ---: |"
    )
    names = ("vectors, no scores", "+ 50 scores, 5 in audience sets",
             "+ 50 scores, all 50 in audience sets")  # fmt: skip
    for name, (secs, per_user) in zip(names, costs, strict=True):
        print(f"| {name} | {secs:.2f} | {secs / costs[0][0]:.2f} | {per_user:,.0f} |")


if __name__ == "__main__":
    main()
