"""Refresh scale-out: users/s and freshness with 1 and 2 refresh workers in one share group.

Each worker is a process of this script (`--worker`): a `Refresher` with a `GroupShare`
(services/refresh/share.py), one torch thread (`torch.set_num_threads(1)`), the default
architecture with untrained weights (the same seed in every worker: the same version). The
stack is the embedded one (Tansu + 3-node Valkey cluster unless --single). For 1 and then
2 workers, started and holding all 32 bucket ranges between them before anything is timed:
- throughput: the same N users' windows are written (every user dirty); users/s = N over
  the time from the first write to no user dirty (then every user is checked for a vector);
  with --rounds R, 1 and 2 workers take turns R times and the median is shown;
- freshness: a steady producer applies one new event to a random user `--rate` times a
  second for `--seconds`; for each, the time from the event's write to the store until a
  vector of that window version is servable (in the store), polled every 50 ms; p50 / p99.

    .venv/bin/python benchmarks/refresh_workers.py [--users 1000] [--rate 5] [--seconds 30]
        [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from windows_common import load_windows

from contract.events import Event
from contract.record import pack_record
from encoder.api import Encoder
from encoder.features import discover
from encoder.model import ModelConfig, UserEncoder
from encoder.synthetic import SyntheticConfig, generate
from encoder.tokenizer import TokenizerConfig
from services.children import die_with_parent
from services.config import WindowConfig
from services.stack import EmbeddedStack, StackConfig
from services.store.client import connect
from services.store.layout import pack_update
from services.store.vectors import VectorStore
from services.store.windows import PackedUpdate, WindowStore

VERSION = "vbench"
RANGES = 32
_ASSIGNED = re.compile(r"refresh share: \d+ of \d+ bucket ranges .*: partitions \[([0-9, ]*)\]")
_REVOKED = re.compile(r"refresh share: \d+ bucket ranges (revoked|lost)")


def encoder(seed: int) -> Encoder:
    import torch

    torch.manual_seed(seed)
    tok = TokenizerConfig(features=discover(generate(SyntheticConfig(users=200)).events))
    return Encoder.from_model(UserEncoder(tok, ModelConfig(dropout=0.0)), version=VERSION)


def worker(args: argparse.Namespace) -> None:
    """One refresh worker until SIGTERM; prints its stats as JSON."""
    import torch

    from services.common import kafka as kafka_clients
    from services.config import KafkaConfig
    from services.refresh.config import RefreshConfig
    from services.refresh.encoders import EncoderCache
    from services.refresh.publish import Publisher
    from services.refresh.refresher import Refresher
    from services.refresh.share import group_share

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cfg = RefreshConfig(
        interval_s=0.5, check_every_s=0.2, batch_size=args.batch_size, follow_registry=False,
        embeddings_topic=args.embeddings_topic, device="cpu", share_group=args.group,
        share_topic=args.shares_topic, share_ranges=RANGES,
    )  # fmt: skip
    kafka = KafkaConfig(bootstrap=args.bootstrap)
    client = connect(args.redis)
    encoders = EncoderCache(Path("/nonexistent"), "cpu")
    encoders.put(encoder(args.seed))
    share = group_share(cfg, kafka)
    share.start()
    ws = WindowStore(client, WindowConfig())
    pub = Publisher(kafka_clients.producer(kafka), cfg.embeddings_topic)
    try:
        stats = Refresher(cfg, ws, VectorStore(client), pub, encoders, share=share).run(stop)
    finally:
        share.close()
        ws.close()
        client.close()
    print(json.dumps(stats.__dict__), flush=True)


# ----- the parent -----------------------------------------------------------------------


class Workers:
    """N worker processes of this script, logging to files in a temporary folder."""

    def __init__(self, n: int, args: argparse.Namespace, bootstrap: str, redis: str, tag: str):
        self.logs = Path(tempfile.mkdtemp(prefix="persona-bench-workers-"))
        argv = [
            sys.executable, __file__, "--worker", "--bootstrap", bootstrap, "--redis", redis,
            "--group", tag, "--shares-topic", f"{tag}.shares", "--embeddings-topic",
            f"{tag}.emb", "--batch-size", str(args.batch_size), "--seed", str(args.seed),
        ]  # fmt: skip
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        self.procs = [self._start(argv, env, i) for i in range(n)]

    def _start(self, argv: list[str], env: dict[str, str], i: int) -> subprocess.Popen[bytes]:
        with open(self.logs / f"w{i}.log", "wb") as out:
            return subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(os.getpid()),
            )  # fmt: skip

    def log(self, i: int) -> str:
        return (self.logs / f"w{i}.log").read_text(errors="replace")

    def held(self, i: int) -> list[int] | None:
        last: list[int] | None = None
        for line in self.log(i).splitlines():
            if m := _ASSIGNED.search(line):
                last = [int(p) for p in m.group(1).split(",") if p.strip()]
            elif _REVOKED.search(line):
                last = None
        return last

    def wait_stable(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            held = [self.held(i) for i in range(len(self.procs))]
            if all(held) and sorted(p for h in held for p in h or []) == list(range(RANGES)):
                return
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise RuntimeError(f"worker {i} exited: {self.log(i)[-3000:]}")
            time.sleep(0.3)
        raise TimeoutError("workers never held the 32 ranges: " + self.log(0)[-3000:])

    def stop(self) -> list[dict[str, int]]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        out = []
        for i, p in enumerate(self.procs):
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            lines = [ln for ln in self.log(i).splitlines() if ln.startswith("{")]
            out.append(json.loads(lines[-1]) if lines else {})
        for f in self.logs.iterdir():
            f.unlink()
        self.logs.rmdir()
        return out


def throughput(
    ws: WindowStore, vs: VectorStore, args: argparse.Namespace
) -> tuple[list[str], float]:
    """The users written and the seconds until none is dirty (a dirty mark goes in the same
    Lua call that writes the vector), then checked: every user has a vector."""
    t0 = time.perf_counter()
    ids = list(load_windows(ws, args.users, args.events_per_user, args.seed))
    while ws.dirty_count():
        time.sleep(0.2)
    secs = time.perf_counter() - t0
    missing = sum(1 for h in vs.get_batch(ids, VERSION) if not h)
    if missing:
        raise RuntimeError(f"{missing} users without a vector and not dirty")
    return ids, secs


def freshness(
    ws: WindowStore, vs: VectorStore, ids: list[str], args: argparse.Namespace
) -> list[float]:
    """Seconds from each new event's store write to a vector of its window being servable."""
    rng = random.Random(args.seed + 1)
    pending: dict[str, tuple[int, float]] = {}  # user -> (window version to see, written at)
    lock = threading.Lock()
    done: list[float] = []
    stop = threading.Event()

    def check() -> None:
        while not stop.is_set() or pending:
            with lock:
                users = list(pending)
            if users:
                heads = vs.get_batch(users, VERSION)
                now = time.perf_counter()
                with lock:
                    for u, h in zip(users, heads, strict=True):
                        if h and u in pending and h[0].window_version >= pending[u][0]:
                            done.append(now - pending.pop(u)[1])
            time.sleep(0.05)

    checker = threading.Thread(target=check, daemon=True)
    checker.start()
    offset = 1_000_000
    t_end = time.perf_counter() + args.seconds
    nxt = time.perf_counter()
    while time.perf_counter() < t_end:
        u = rng.choice(ids)
        with lock:
            if u in pending:  # one measurement per user at a time
                continue
        ts = time.time_ns() // 1_000_000
        offset += 1
        ev = Event(u, f"{u}-f{offset}", ts, "view", {"item": f"i{rng.randrange(300)}"})
        t = time.perf_counter()
        blob = pack_update(offset, ev.event_id.encode(), ts, pack_record(ev))
        ws.apply_packed([PackedUpdate(u, 1, blob)])
        (w,) = ws.read([u])
        with lock:
            pending[u] = (w.version, t)
        nxt += 1.0 / args.rate
        time.sleep(max(0.0, nxt - time.perf_counter()))
    stop.set()
    checker.join(timeout=120)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events-per-user", type=float, default=30.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rate", type=float, default=5.0, help="freshness: updates/s")
    ap.add_argument("--seconds", type=float, default=30.0, help="freshness: how long")
    ap.add_argument("--single", action="store_true", help="one Valkey node, not a cluster")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1, help="1 then 2 workers, this many times")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--bootstrap", "--redis", "--group", "--shares-topic", "--embeddings-topic"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    logging.basicConfig(level=logging.WARNING)
    secs: dict[int, list[float]] = {1: [], 2: []}
    lat: dict[int, list[float]] = {1: [], 2: []}
    enc: dict[int, list[float]] = {1: [], 2: []}
    with EmbeddedStack(StackConfig(cluster=not args.single)) as stack:
        a = stack.addresses
        client = connect(a.redis)
        ws, vs = WindowStore(client, WindowConfig()), VectorStore(client)
        for r in range(args.rounds):
            for n in (1, 2):  # taking turns: a change in the machine's load hits both
                for node in ws.router.primaries():
                    node.flushall()
                vs.set_active(VERSION)
                workers = Workers(n, args, a.bootstrap, a.redis, f"bench-{n}-{r}-{os.getpid()}")
                try:
                    workers.wait_stable(300)
                    ids, t = throughput(ws, vs, args)
                    fresh = freshness(ws, vs, ids, args)
                finally:
                    stats = workers.stop()
                secs[n].append(t)
                lat[n] += fresh
                enc[n].append(sum(s.get("users", 0) for s in stats) / (len(ids) + len(fresh)))
        ws.close()
        vs.close()
        client.close()
    base = args.users / statistics.median(secs[1])
    print(
        f"\n{args.users} users, {args.events_per_user:.0f} events each, batch {args.batch_size},"
        f" default architecture (untrained), 1 torch thread a worker,"
        f" {'1 Valkey node' if args.single else '3-node Valkey cluster'}, Tansu, {args.rounds}"
        f" rounds taking turns (median); freshness: {args.rate:g} updates/s for"
        f" {args.seconds:g} s a round\n"
    )
    print("| workers | seconds | users/s | vs 1 worker | encodes / dirty users |"
          " freshness p50 s | freshness p99 s | samples |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in (1, 2):
        t = statistics.median(secs[n])
        p50, p99 = np.percentile(lat[n], [50, 99]) if lat[n] else (float("nan"),) * 2
        print(
            f"| {n} | {t:.1f} | {args.users / t:.1f} | {args.users / t / base:.2f} |"
            f" {max(enc[n]):.3f} | {p50:.2f} | {p99:.2f} | {len(lat[n])} |"
        )
    print("rounds, seconds:", {n: [round(x, 1) for x in v] for n, v in secs.items()})


if __name__ == "__main__":
    main()
