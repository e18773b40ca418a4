"""The short-term head served (issue #17): freshness of GetEmbeddings, and what the head costs.

    OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/realtime.py \
        [--users 3000] [--rate 20] [--seconds 30] [--cost-seconds 8] [--models DIR --version V]

Setup, all on loopback: the embedded Tansu broker and 3-node Valkey cluster; a version
trained here on synthetic users (`persona train` defaults but a small model: d_model 64,
one layer, dim 64; its short-term head trained by default), or `--models/--version` to
reuse one; `--users` synthetic users' windows (about 12 events each, ending a minute ago)
written into the store and refreshed once by the refresher (layout 3: each vector carries
the marker of its newest event); then no refresher runs. `persona serve --no-index --models`
and `persona ingest` run as child processes, as in production.

- Cost: every user of one third gets `--new-events` (3) events after its refresh, applied to
  the window store as `persona ingest --models` does (the short-term state kept in the
  APPLY, then each user's delta computed and stored) for a third of them, with the state
  only for another third (the moment between the APPLY and ingest's delta write), and
  without either for the last (ingest without the models); GetEmbeddings of 100 ids, taking
  turns for `--cost-seconds` x 6: `part` NEARLINE (the plain read, no events), COMBINED for
  users with no new event (the plain read with each user's meta `v` and delta field), COMBINED
  for 100 users of whom 10 have new events (from their deltas), COMBINED for users who all
  have new events (from their deltas: serving adds them), the same before the deltas (the
  state read in a second round trip and folded: one head delta over 100 users), and the same
  without the state (the script reads the windows, the events' records are decoded). Target
  (issue #17): p50 with the head <= +0.5 ms over nearline alone (the deltas' row). With Go
  installed, every request set also through the Go front (`serve_front.py`, front/go, with
  `-models`), in the same turns: it answers the first five itself (the state one with the
  version's head in Go) and forwards the window one.
- Freshness: a producer sends `--rate` events a second, each for a random user of another
  third (types and values from that user's window), to the events topic (protobuf, key =
  user id, librdkafka defaults of `services.common.kafka.producer`: linger 5 ms); `persona
  ingest --models` applies them and keeps the short-term state; a poller calls GetEmbeddings
  (COMBINED, every pending user in one call, back to back) until each event is reflected:
  the row's `newest_event_ms` reaches the event's time with the head folding events in. The
  time from the producer's send to the first response that reflects it; p50, p99, max over
  `--seconds`. Target (issue #17): p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import numpy as np
import serve_front
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc
from serve import wait_healthy
from serve_common import interleaved, percentiles

from contract.codec import event_to_proto
from contract.events import Event
from contract.record import pack_record
from encoder.model import ModelConfig
from encoder.release import train_version
from encoder.shortterm import ShortTermHead
from encoder.synthetic import SyntheticConfig, generate
from encoder.train import TrainSpec, group_by_user
from services.common import kafka as kafka_clients
from services.common.heads import RegistryHeads
from services.config import KafkaConfig, WindowConfig
from services.ingest.states import StateKeeper
from services.refresh.config import RefreshConfig
from services.refresh.encoders import EncoderCache
from services.refresh.publish import Publisher
from services.refresh.refresher import Refresher
from services.stack import EmbeddedStack, StackConfig, free_ports
from services.store.client import connect
from services.store.layout import pack_update
from services.store.vectors import VectorStore
from services.store.windows import PackedUpdate, WindowStore

log = logging.getLogger("bench.realtime")
BATCH = 100
NEARLINE = "nearline (part NEARLINE)"
FULL = "combined, every user with new events (ingest's deltas)"
FULL_STATE = "combined, every user with new events, before ingest's deltas (the state folded)"
VIA_FRONT = ", through the Go front"  # the same requests through persona-front (front/go)
CLI = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]


def trained(args: argparse.Namespace, models: Path) -> str:
    """The version to serve: `--version` from `--models`, or one trained now."""
    if args.version:
        return str(args.version)
    ds = generate(SyntheticConfig(users=args.train_users, events_per_user=30.0, seed=3))
    spec = TrainSpec()
    spec = replace(spec, model=ModelConfig(d_model=64, n_layers=1, d_ff=128),
                   train=replace(spec.train, progress=False))  # fmt: skip
    t0 = time.perf_counter()
    version, _ = train_version(ds.events, spec, models, ds.config.end_ms)
    log.info("trained %s in %.0f s", version, time.perf_counter() - t0)
    return version


def load_users(ws: WindowStore, users: int) -> dict[str, list[Event]]:
    """Synthetic windows (about 12 events a user), shifted to end a minute ago; returns each
    user's events."""
    ds = generate(SyntheticConfig(users=users, events_per_user=12.0, seed=11))
    shift = int(time.time() * 1000) - 60_000 - ds.config.end_ms
    by_user = {
        u: [replace(e, ts_ms=e.ts_ms + shift) for e in evs]
        for u, evs in group_by_user(ds.events).items()
    }
    ups = [PackedUpdate(u, 0, b"".join(pack_update(k, e.event_id.encode(), e.ts_ms,
                                                   pack_record(e)) for k, e in enumerate(evs)))
           for u, evs in by_user.items()]  # fmt: skip
    for i in range(0, len(ups), 500):
        ws.apply_packed(ups[i : i + 500])
    return by_user


def like(events: list[Event], k: int) -> Event:
    """One of a user's last three events (their types and values: what the model knows)."""
    return events[-1 - k % min(3, len(events))]


def later(ev: Event, eid: str, ts_ms: int) -> Event:
    """A new event like `ev` (its type and properties: values the model knows)."""
    return replace(ev, event_id=eid, ts_ms=ts_ms)


def cost(stub: Any, ws: WindowStore, groups: tuple[list[str], list[str]],
         by_user: dict[str, list[Event]], keeper: StateKeeper, args: argparse.Namespace,
         front: Any) -> dict[str, list[float]]:  # fmt: skip
    """GetEmbeddings of 100 ids: nearline, combined without new events, with 10 of the 100
    users having new events, with all of them (ingest's deltas stored), with all of them
    before ingest stored their deltas (the state folded at request time), and with all of
    them applied without the short-term state (the window read). With `front`, each request
    set also through the Go front (which answers the first five itself, the window one
    forwarded)."""
    fresh, quiet = groups
    # new events with the state and ingest's delta / with the state only / without either
    folded, kept, bare = fresh[0::3], fresh[1::3], fresh[2::3]
    now = int(time.time() * 1000)
    new = {u: [later(like(by_user[u], k), f"{u}-new{k}", now + k) for k in range(args.new_events)]
           for u in fresh}  # fmt: skip
    stated = folded + kept
    spec, rows = keeper.rows([e for u in stated for e in new[u]])
    if spec is None or rows is None:
        raise RuntimeError("no short-term state kept: the version has no head?")
    per = rows.reshape(len(stated), -1)
    ups = [PackedUpdate(u, "cost", b"".join(pack_update(k, e.event_id.encode(), e.ts_ms,
                                                        pack_record(e))
                                            for k, e in enumerate(new[u])), r.tobytes())
           for u, r in zip(stated, per, strict=True)]  # fmt: skip
    for i in range(0, len(ups), 500):
        ws.apply_packed(ups[i : i + 500], states=spec)
    for i in range(0, len(folded), 500):  # what `persona ingest --models` does next
        keeper.fold_deltas(folded[i : i + 500])
    ups = [PackedUpdate(u, "cost", b"".join(pack_update(k, e.event_id.encode(), e.ts_ms,
                                                        pack_record(e))
                                            for k, e in enumerate(new[u])))
           for u in bare]  # fmt: skip
    for i in range(0, len(ups), 500):
        ws.apply_packed(ups[i : i + 500])
    rng = np.random.default_rng(1)

    def reqs(ids: list[str], part: pb.VectorPart) -> list[pb.GetEmbeddingsRequest]:
        picks = [list(rng.choice(ids, BATCH, replace=False)) for _ in range(64)]
        return [pb.GetEmbeddingsRequest(user_ids=p, part=part) for p in picks]

    def mixed(share: float) -> list[pb.GetEmbeddingsRequest]:
        k = round(BATCH * share)  # k users with new events, the rest without
        picks = [[*rng.choice(folded, k, replace=False), *rng.choice(quiet, BATCH - k,
                  replace=False)] for _ in range(64)]  # fmt: skip
        return [pb.GetEmbeddingsRequest(user_ids=p, part=pb.VECTOR_PART_COMBINED) for p in picks]

    n = args.new_events
    calls = {
        NEARLINE: reqs(fresh, pb.VECTOR_PART_NEARLINE),
        "combined, no new event": reqs(quiet, pb.VECTOR_PART_COMBINED),
        f"combined, 10 of {BATCH} users with {n} new events": mixed(0.1),
        FULL: reqs(folded, pb.VECTOR_PART_COMBINED),
        FULL_STATE: reqs(kept, pb.VECTOR_PART_COMBINED),
        "combined, every user with new events, applied without the state (window read)": reqs(
            bare, pb.VECTOR_PART_COMBINED
        ),
    }
    for name in (FULL, FULL_STATE, list(calls)[-1]):
        check = stub.GetEmbeddings(calls[name][0])
        if set(check.meta.short_term_events) != {n}:
            raise RuntimeError(f"{name}: head folded {set(check.meta.short_term_events)} events")

    def call(st: Any, rs: list[pb.GetEmbeddingsRequest]) -> Callable[[int], object]:
        return lambda i: np.frombuffer(st.GetEmbeddings(rs[i % len(rs)], timeout=5).vectors, "<f4")

    paths = {k: call(stub, v) for k, v in calls.items()}
    if front is not None:
        front.GetEmbeddings(calls[FULL][0])  # forwarded: teaches the front the version's head
        for name, rs in calls.items():
            got, want = front.GetEmbeddings(rs[0]), stub.GetEmbeddings(rs[0])
            # rows the front's head computed (the state path) equal Python's within float32
            # rounding (its matmul is not bit-identical); every other row is bit for bit
            close = np.allclose(np.frombuffer(got.vectors, "<f4"),
                                np.frombuffer(want.vectors, "<f4"), rtol=0, atol=1e-5)  # fmt: skip
            if not close or got.meta.short_term_events != want.meta.short_term_events:
                raise RuntimeError(f"{name}: the Go front answered otherwise")
            paths[name + VIA_FRONT] = call(front, rs)
    return interleaved(paths, len(paths) * args.cost_seconds)


def freshness(stub: service_pb2_grpc.UserEmbeddingServiceStub, bootstrap: str, topic: str,
              users: list[str], by_user: dict[str, list[Event]],
              args: argparse.Namespace) -> tuple[list[float], int]:  # fmt: skip
    """Seconds from each produced event's send to the first GetEmbeddings that reflects it,
    and how many were never seen within 10 s after the run."""
    prod = kafka_clients.producer(KafkaConfig(bootstrap=bootstrap))
    sent: queue.Queue[tuple[str, int, float]] = queue.Queue()
    stop = threading.Event()
    rng = np.random.default_rng(2)

    def produce(n: int, every_s: float) -> None:
        nxt = time.monotonic()
        for k in range(n):
            if stop.is_set():
                return
            u = users[int(rng.integers(len(users)))]
            ts = int(time.time() * 1000)
            ev = later(like(by_user[u], k), f"{u}-fresh{k:06d}", ts)
            t0 = time.perf_counter()
            prod.send(topic, value=event_to_proto(ev), key=u.encode())
            sent.put((u, ts, t0))
            nxt += every_s
            stop.wait(max(0.0, nxt - time.monotonic()))

    def poll_until(deadline: float, out: list[float]) -> int:
        pending: list[tuple[str, int, float]] = []
        while time.monotonic() < deadline:
            while not sent.empty():
                pending.append(sent.get())
            if not pending:
                if not producer.is_alive():
                    return 0
                time.sleep(0.002)
                continue
            ids = list(dict.fromkeys(u for u, _, _ in pending))
            r = stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=ids), timeout=5)
            seen = time.perf_counter()
            row = {u: i for i, u in enumerate(ids)}
            newest, folded = r.meta.newest_event_ms, r.meta.short_term_events
            keep = []
            for u, ts, t0 in pending:
                i = row[u]
                if folded[i] > 0 and newest[i] >= ts:
                    out.append(seen - t0)
                else:
                    keep.append((u, ts, t0))
            pending = keep
        return len(pending)

    # warm-up: the ingest consumer joins its group; the first event seen ends it
    producer = threading.Thread(target=produce, args=(1, 0.0))
    producer.start()
    producer.join()
    prod.flush(10)
    warm: list[float] = []
    if poll_until(time.monotonic() + 60, warm):
        raise RuntimeError("the warm-up event never reached GetEmbeddings")
    log.info("ingest is live (warm-up event seen after %.2f s); measuring", warm[0])
    n = int(args.rate * args.seconds)
    producer = threading.Thread(target=produce, args=(n, 1.0 / args.rate))
    out: list[float] = []
    producer.start()
    try:
        missed = poll_until(time.monotonic() + args.seconds + 10, out)
    finally:
        stop.set()
        producer.join()
        prod.close(10)
    return out, missed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--train-users", type=int, default=600)
    ap.add_argument("--rate", type=float, default=20.0, help="events a second (freshness)")
    ap.add_argument("--seconds", type=float, default=30.0, help="freshness run")
    ap.add_argument("--cost-seconds", type=float, default=8.0, help="per path (cost)")
    ap.add_argument("--new-events", type=int, default=3, help="cost: new events per user")
    ap.add_argument("--models", type=Path, default=None, help="registry to reuse / keep")
    ap.add_argument("--version", default="", help="with --models: the version to serve")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or Path(tmp)
        version = trained(args, models)
        head = ShortTermHead.load(models, version)
        if head is None:
            raise SystemExit(f"version {version} has no short-term head")
        with EmbeddedStack(StackConfig(cluster=True)) as stack:
            results = run(args, stack, models, version)
    fresh, missed, costs = results
    report(args, version, head, fresh, missed, costs, time.perf_counter() - t_all)
    return 0


def run(args: argparse.Namespace, stack: EmbeddedStack, models: Path,
        version: str) -> tuple[list[float], int, dict[str, list[float]]]:  # fmt: skip
    a = stack.addresses
    client = connect(a.redis)
    ws, vectors = WindowStore(client, WindowConfig()), VectorStore(client)
    by_user = load_users(ws, args.users)
    vectors.set_active(version)
    cfg = RefreshConfig(embeddings_topic=a.embeddings_topic, follow_registry=False, device="cpu")
    pub = Publisher(kafka_clients.producer(KafkaConfig(bootstrap=a.bootstrap)),
                    cfg.embeddings_topic)  # fmt: skip
    t0 = time.perf_counter()
    stats = Refresher(cfg, ws, vectors, pub, EncoderCache(models, "cpu")).run(
        threading.Event(), until_idle=True
    )
    log.info("refreshed %d users in %.0f s; no refresher from here on", stats.users,
             time.perf_counter() - t0)  # fmt: skip
    users = sorted(by_user)
    thirds = (users[0::3], users[1::3], users[2::3])  # cost: new events / none; freshness
    port, _ = free_ports(2)
    serve = [*CLI, "serve", "--no-index", "--host", "127.0.0.1", "--port", str(port),
             "--redis", a.redis, "--dim", "64", "--bootstrap", a.bootstrap,
             "--models", str(models)]  # fmt: skip
    ingest = [*CLI, "ingest", "--bootstrap", a.bootstrap, "--redis", a.redis, "--models",
              str(models), "--topic", a.topic,
              "--group", f"bench-{uuid.uuid4().hex[:8]}"]  # fmt: skip
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for c in (serve, ingest)]  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            wait_healthy(ch, lambda: procs[0].poll() is None, 60)
            stub = service_pb2_grpc.UserEmbeddingServiceStub(ch)
            keeper = StateKeeper(vectors.versions, RegistryHeads(models), every_s=0.0,
                                 store=vectors)  # fmt: skip
            front = serve_front.GoFront.start(port, list(a.redis_nodes), 64, "-models",
                                              str(models))  # fmt: skip
            with serve_front.channel(front) as fstub:  # None: no Go (logged)
                costs = cost(stub, ws, thirds[:2], by_user, keeper, args, fstub)
            fresh, missed = freshness(stub, a.bootstrap, a.topic, thirds[2], by_user, args)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        ws.close()
        vectors.close()
        client.close()
    return fresh, missed, costs


def report(args: argparse.Namespace, version: str, head: ShortTermHead, fresh: list[float],
           missed: int, costs: dict[str, list[float]], total_s: float) -> None:  # fmt: skip
    print(f"\n{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), loopback, "
          f"Tansu + 3-node Valkey cluster, {args.users:,} users, version {version} (dim "
          f"{head.out_dim}, head folds at most {head.max_events} events)")  # fmt: skip
    print(
        f"\nCost: GetEmbeddings of {BATCH} ids, taking turns, "
        f"{len(costs) * args.cost_seconds:.0f} s\n"
    )
    print("| request | calls | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    p50s = {}
    for name, samples in costs.items():
        p50, p99 = percentiles(samples)
        p50s[name] = p50
        print(f"| {name} | {len(samples):,} | {p50:.2f} | {p99:.2f} |")
    base, full = p50s[NEARLINE], p50s[FULL]
    print(f"\nhead cost, p50: +{full - base:.2f} ms (target <= +0.5 ms)")
    if FULL + VIA_FRONT in p50s:
        near_f, full_f = p50s[NEARLINE + VIA_FRONT], p50s[FULL + VIA_FRONT]
        print(
            f"through the Go front: +{full_f - near_f:.2f} ms over its own nearline; "
            f"{full_f:.2f} ms against persona serve's {full:.2f} ms"
        )
    p50, p99 = percentiles(fresh)
    worst = max(fresh) * 1000 if fresh else float("nan")
    print(f"\nFreshness: {len(fresh)} events at {args.rate:g}/s for {args.seconds:g} s, send ->"
          f" first GetEmbeddings (COMBINED) that reflects it: p50 {p50:.0f} ms, p99 {p99:.0f} ms,"
          f" max {worst:.0f} ms; {missed} never seen (target p99 <= 1000 ms)")  # fmt: skip
    cmd = shlex.join(["python", "benchmarks/realtime.py", *sys.argv[1:]])
    print(f"\ncommand: `{cmd}` (total {total_s:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
