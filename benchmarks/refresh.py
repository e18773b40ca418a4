"""Refresh throughput: the whole refresh path vs the encoder alone, on the same windows.

Synthetic users' windows are written straight into the embedded stack's store (3-node
Valkey cluster unless --single) and marked dirty; then
- full path: `Refresher.run(until_idle=True)`: dirty users oldest first, pipelined window
  reads, encode, publish to the update log (waiting for acks), Lua write + dirty clear;
- encoder alone: the same windows, read once beforehand, through `Encoder.encode` in
  batches of the same size.
The ratio full / encoder shows what the I/O costs. The model is the default architecture
(untrained weights cost the same FLOPs) unless --models names a registry.

    .venv/bin/python benchmarks/refresh.py [--users 4000] [--events-per-user 60] [--single]
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from prometheus_client import CollectorRegistry

from contract.record import pack_record
from encoder.api import Encoder
from encoder.features import discover
from encoder.model import ModelConfig, UserEncoder
from encoder.synthetic import SyntheticConfig, generate
from encoder.tokenizer import TokenizerConfig
from encoder.train import group_by_user
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


def load_windows(ws: WindowStore, users: int, per_user: float, seed: int) -> list[str]:
    ds = generate(SyntheticConfig(users=users, events_per_user=per_user, seed=seed))
    by_user = group_by_user(ds.events)
    ups = [
        PackedUpdate(u, 0, b"".join(
            pack_update(off, ev.event_id.encode(), ev.ts_ms, pack_record(ev))
            for off, ev in enumerate(evs)
        ))
        for u, evs in by_user.items()
    ]  # fmt: skip
    for i in range(0, len(ups), 500):
        ws.apply_packed(ups[i : i + 500])
    return list(by_user)


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
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.models:
        enc = Encoder.load(args.models)
    else:
        torch.manual_seed(args.seed)
        tok = TokenizerConfig(features=discover(generate(SyntheticConfig(users=200)).events))
        model = UserEncoder(tok, ModelConfig(dropout=0.0))
        enc = Encoder.from_model(model, version="vbench")
    with EmbeddedStack(StackConfig(cluster=not args.single)) as stack:
        a = stack.addresses
        client = connect(a.redis)
        ws = WindowStore(client, WindowConfig())
        ids = load_windows(ws, args.users, args.events_per_user, args.seed)
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
        stages = {
            s: reg.get_sample_value("persona_refresh_batch_seconds_sum", {"stage": s}) or 0.0
            for s in ("read", "encode", "publish", "write")
        }
        client.close()
    n = len(ids)
    store = "3-node Valkey cluster" if not args.single else "1 Valkey node"
    print(
        f"\n{n} users, mean window {mean_len:.0f} events, batch {args.batch_size}, "
        f"{store}, Tansu, {enc.device} ({torch.get_num_threads()} threads)\n"
    )
    print("| path | seconds | users/s | vs encoder alone |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| encoder alone (same windows, pre-read) | {alone_s:.2f} | {n / alone_s:,.0f} | 1.00 |")
    print(
        f"| full refresh (read, encode, publish, write) | {full_s:.2f} | {n / full_s:,.0f} "
        f"| {alone_s / full_s:.2f} |"
    )
    print("\nfull-path stage seconds (publish + write overlap the next batch's encode):")
    print(" ".join(f"{k}={v:.2f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
