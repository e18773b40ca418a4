"""Refresh throughput: the whole refresh path vs the encoder alone, on the same windows.

Synthetic users' windows are written straight into the embedded stack's store (3-node
Valkey cluster unless --single) and marked dirty; then
- full path: `Refresher.run(until_idle=True)`: dirty users oldest first, pipelined window
  reads, encode, publish to the update log (waiting for acks), Lua write + dirty clear;
- encoder alone: the same windows, read once beforehand, through `Encoder.encode` in
  batches of the same size.
The ratio full / encoder shows what the I/O costs. Beside them, reading the same windows
whole and only their newest `max_events` (what the refresher reads), taking turns. The model
is the default architecture (untrained weights cost the same FLOPs) unless --models names a
registry.

`--drift-rounds N` then measures what the drift signal costs (services/refresh/drift.py:
one more pipelined read per batch): every user gets one new event and is refreshed again,
N times with drift off and N times on, taking turns (a loaded machine's noise falls on both
alike); it prints the median users/s of each and the drift observed.

    .venv/bin/python benchmarks/refresh.py [--users 4000] [--events-per-user 60] [--single]
        [--drift-rounds 3] [--compile] [--bf16] [--encode-streams N]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from prometheus_client import CollectorRegistry
from windows_common import load_windows

from contract.events import Event
from contract.record import pack_record
from encoder.api import Encoder
from encoder.features import discover
from encoder.model import ModelConfig, UserEncoder
from encoder.synthetic import SyntheticConfig, generate
from encoder.tokenizer import TokenizerConfig
from services.common import kafka as kafka_clients
from services.config import KafkaConfig, WindowConfig
from services.refresh.config import RefreshConfig
from services.refresh.encoders import EncoderCache
from services.refresh.metrics import refresh_metrics
from services.refresh.publish import Publisher
from services.refresh.refresher import Refresher
from services.stack import EmbeddedStack, StackConfig
from services.store.client import connect
from services.store.layout import pack_update
from services.store.vectors import VectorStore
from services.store.windows import PackedUpdate, WindowStore

log = logging.getLogger("bench.refresh")


def touch(ws: WindowStore, last: dict[str, Event], k: int) -> None:
    """One new event per user (a copy of its newest, later): every user dirty again."""
    again = [
        replace(ev, event_id=f"{ev.event_id}-again{k}", ts_ms=ev.ts_ms + k) for ev in last.values()
    ]
    ups = [
        PackedUpdate(ev.user_id, 0, pack_update(1_000_000 + k, ev.event_id.encode(), ev.ts_ms,
                                                pack_record(ev)))
        for ev in again
    ]  # fmt: skip
    for i in range(0, len(ups), 500):
        ws.apply_packed(ups[i : i + 500])


def read_newest_vs_full(
    ws: WindowStore, ids: list[str], batch: int, newest: int, rounds: int = 3
) -> tuple[float, float]:
    """Seconds to read (and decode) every window whole and only its newest `newest` events,
    as the refresher does for an encoder reading `newest`: best of `rounds`, taking turns."""
    best = {0: float("inf"), newest: float("inf")}
    for _ in range(rounds):
        for n in best:
            t0 = time.perf_counter()
            for i in range(0, len(ids), batch):
                ws.read(ids[i : i + batch], n or None)
            best[n] = min(best[n], time.perf_counter() - t0)
    return best[0], best[newest]


def encoder_alone(enc: Encoder, ws: WindowStore, ids: list[str], batch: int) -> float:
    wins = [w.events for w in ws.read(ids)]
    now = time.time_ns() // 1_000_000
    enc.encode(wins[:batch], now)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(wins), batch):
        enc.encode(wins[i : i + batch], now)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--events-per-user", type=float, default=60.0)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--single", action="store_true", help="one Valkey node, not a cluster")
    ap.add_argument("--models", type=Path, default=None, help="registry (default: untrained)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--compile", action="store_true", help="compile the encoder's layers (encoder/compiled.py)"
    )
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on a CPU with native bf16")
    ap.add_argument("--drift-rounds", type=int, default=0, help="passes with drift off / on")
    ap.add_argument("--encode-streams", type=int, default=1, help="passes at once (CPU)")
    args = ap.parse_args()
    how = {"compile": args.compile, "bf16": args.bf16, "streams": args.encode_streams}
    logging.basicConfig(level=logging.WARNING)
    if args.models:
        enc = Encoder.load(args.models, **how)
    else:
        torch.manual_seed(args.seed)
        tok = TokenizerConfig(features=discover(generate(SyntheticConfig(users=200)).events))
        model = UserEncoder(tok, ModelConfig(dropout=0.0))
        enc = Encoder.from_model(model, version="vbench", **how)
    with EmbeddedStack(StackConfig(cluster=not args.single)) as stack:
        a = stack.addresses
        client = connect(a.redis)
        ws = WindowStore(client, WindowConfig())
        last = load_windows(ws, args.users, args.events_per_user, args.seed)
        ids = list(last)
        mean_len = sum(len(w.events) for w in ws.read(ids[:500])) / min(500, len(ids))
        cfg = RefreshConfig(
            embeddings_topic=a.embeddings_topic,
            batch_size=args.batch_size,
            follow_registry=False,
            device=str(enc.device),
        )
        vectors = VectorStore(client, cfg.history)
        vectors.set_active(enc.version)
        encoders = EncoderCache(Path("/nonexistent"), cfg.device)
        encoders.put(enc)
        reg = CollectorRegistry()
        pub = Publisher(
            kafka_clients.producer(KafkaConfig(bootstrap=a.bootstrap)), cfg.embeddings_topic
        )
        r = Refresher(cfg, ws, vectors, pub, encoders, refresh_metrics(reg))
        t0 = time.perf_counter()
        stats = r.run(threading.Event(), until_idle=True)
        full_s = time.perf_counter() - t0
        assert stats.users == len(ids), stats
        alone_s = encoder_alone(enc, ws, ids, args.batch_size)
        read_full_s, read_newest_s = read_newest_vs_full(ws, ids, args.batch_size, enc.max_events)
        rates: dict[bool, list[float]] = {False: [], True: []}
        regs = {False: CollectorRegistry(), True: CollectorRegistry()}
        metrics = {on: refresh_metrics(reg) for on, reg in regs.items()}
        for k in range(2 * args.drift_rounds):
            drift = k % 2 == 1
            touch(ws, last, k)
            pub = Publisher(
                kafka_clients.producer(KafkaConfig(bootstrap=a.bootstrap)), cfg.embeddings_topic
            )
            r = Refresher(replace(cfg, drift=drift), ws, vectors, pub, encoders, metrics[drift])
            t1 = time.perf_counter()
            assert r.run(threading.Event(), until_idle=True).users == len(ids)
            rates[drift].append(len(ids) / (time.perf_counter() - t1))
        prev_read_ms = []  # what drift adds to a batch's read stage, alone
        for i in range(0, min(len(ids), 20 * args.batch_size), args.batch_size):
            t1 = time.perf_counter()
            vectors.read_batch(ids[i : i + args.batch_size], enc.version, 1, time.monotonic() + 10)
            prev_read_ms.append((time.perf_counter() - t1) * 1000)
        stages = {
            s: reg.get_sample_value("persona_refresh_batch_seconds_sum", {"stage": s}) or 0.0
            for s in ("read", "encode", "publish", "write")
        }
        client.close()
    enc.close()
    n = len(ids)
    store = "3-node Valkey cluster" if not args.single else "1 Valkey node"
    print(
        f"\n{n} users, mean window {mean_len:.0f} events, batch {args.batch_size}, "
        f"{store}, Tansu, {enc.device} ({torch.get_num_threads()} threads)"
        f"{', compiled' if enc.compiled else ''}{', bf16' if enc.bf16 else ''}"
        f"{f', {args.encode_streams} streams' if args.encode_streams > 1 else ''}\n"
    )
    print("| path | seconds | users/s | vs encoder alone |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| encoder alone (same windows, pre-read) | {alone_s:.2f} | {n / alone_s:,.0f} | 1.00 |")
    print(
        f"| full refresh (read, encode, publish, write) | {full_s:.2f} | {n / full_s:,.0f} "
        f"| {alone_s / full_s:.2f} |"
    )
    print(
        f"| reading the windows whole (decode included) | {read_full_s:.2f} "
        f"| {n / read_full_s:,.0f} | |\n"
        f"| reading their newest {enc.max_events} events (what the refresher reads) "
        f"| {read_newest_s:.2f} | {n / read_newest_s:,.0f} | |"
    )
    print("\nfull-path stage seconds (publish + write overlap the next batch's encode):")
    print(" ".join(f"{k}={v:.2f}" for k, v in stages.items()))
    if args.drift_rounds:
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"\nreturning users (one new event each), {args.drift_rounds} passes each, median:")
        print("| drift | users/s | passes (users/s) |")
        print("| --- | ---: | --- |")
        for name, med, rs in (("off", off, rates[False]), ("on", on, rates[True])):
            print(f"| {name} | {med:,.0f} | {', '.join(f'{x:,.0f}' for x in rs)} |")
        read_s = {
            on: (reg.get_sample_value("persona_refresh_batch_seconds_sum", {"stage": "read"}) or 0)
            / max(
                1,
                reg.get_sample_value("persona_refresh_batch_seconds_count", {"stage": "read"}) or 0,
            )
            for on, reg in regs.items()
        }
        print(
            f"read stage wait per batch: off {read_s[False] * 1000:.1f} ms, on "
            f"{read_s[True] * 1000:.1f} ms; previous vectors of {args.batch_size} users read"
            f" alone: median {statistics.median(prev_read_ms):.1f} ms"
        )
        dreg = regs[True]
        lbl = {"version": enc.version}
        n_obs = dreg.get_sample_value("persona_refresh_vector_drift_cosine_count", lbl) or 0
        mean = (dreg.get_sample_value("persona_refresh_vector_drift_cosine_sum", lbl) or 0) / max(
            n_obs, 1
        )
        print(f"on / off {on / off:.3f}; drift observed: {n_obs:.0f} users, mean {mean:.4f}")


if __name__ == "__main__":
    main()
