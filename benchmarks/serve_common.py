"""What the serving benchmarks share: the stored users and the timing loops.

Stdlib and numpy only, so that the Feast peer (`benchmarks/serve_feast.py`, run with the
Feast virtualenv's Python) times its calls with the very loop that times GetEmbeddings.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

VERSION, DIM = "vbench-1", 64
WARMUP = 50  # calls before any timing
N_SCORES = 50  # outcome scores per user: the synthetic world's served columns
HORIZONS_MS = (3_600_000, 86_400_000, 259_200_000, 604_800_000, 1_209_600_000)  # 1 h .. 2 w


def score_columns_json(n_scores: int) -> str:
    """The version's score columns as the store keeps them (services/store/LAYOUT.md,
    `p:{models}:scores:<ver>`): "(any)" and "type=e<k>" outcomes, each at every horizon."""
    outcomes = ["(any)"] + [f"type=e{k}" for k in range(-(-n_scores // len(HORIZONS_MS)) - 1)]
    cols = [
        {"outcome": o, "horizon_ms": h, "calibrated": True} for o in outcomes for h in HORIZONS_MS
    ]
    return json.dumps({"columns": cols[:n_scores]})


def user_scores(n: int, n_scores: int) -> np.ndarray:
    """The benchmark's users' outcome probabilities, (n, n_scores) float32 (seeded)."""
    return np.random.default_rng(2).random((n, n_scores), np.float32)


def user_vectors(n: int) -> tuple[list[str], np.ndarray]:
    """The benchmark's users: ids `user-0..n-1` and their vectors, (n, DIM) float32, the same
    on every call (seeded), so that every store under test holds the same values."""
    rng = np.random.default_rng(0)
    ids = [f"user-{i}" for i in range(n)]
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)  # (n, DIM)
    return ids, vecs


def batches_of(ids: list[str], size: int, count: int = 256) -> list[list[str]]:
    """`count` requests of `size` distinct ids each, the same on every call (seeded)."""
    rng = np.random.default_rng(1)
    return [[str(u) for u in rng.choice(ids, size, replace=False)] for _ in range(count)]


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50 ms, p99 ms) of samples in seconds."""
    a = np.asarray(samples) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def timed(call: Callable[[int], object], seconds: float) -> list[float]:
    """Seconds each `call(i)` took, one at a time, for `seconds`, after WARMUP calls."""
    for i in range(WARMUP):
        call(i)
    out: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - t0)
        i += 1
    return out


def latency(call: Callable[[int], object], seconds: float) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, calls) of `call(i)`, one at a time (`timed`)."""
    out = timed(call, seconds)
    p50, p99 = percentiles(out)
    return p50, p99, len(out)


def interleaved(
    calls: dict[str, Callable[[int], object]], seconds: float
) -> dict[str, list[float]]:
    """Latency samples of each call, taken in turn (a, b, c, a, b, c, ...) so that all see
    the same machine load; WARMUP rounds first."""
    for i in range(WARMUP):
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


def write_users(store: Any, ids: list[str], vecs: np.ndarray, n_scores: int = 0) -> None:
    """Writes the users' vectors as version VERSION with a Persona `VectorStore` and makes
    it the active version (imported here: the Feast side never calls this). `n_scores` > 0:
    scored records (`user_scores`, layout 2) and the version's score columns recorded first,
    as the refresher does."""
    from services.store.records import StoredVector

    now = int(time.time() * 1000)
    scores: list[np.ndarray | None] = [None] * len(ids)
    if n_scores:
        store.set_score_columns(VERSION, score_columns_json(n_scores))
        scores = list(user_scores(len(ids), n_scores))
    for lo in range(0, len(ids), 2000):
        hi = lo + 2000
        rows = zip(ids[lo:hi], vecs[lo:hi], scores[lo:hi], strict=True)
        store.put_batch([StoredVector(u, VERSION, v, now, 10, 1, s) for u, v, s in rows])
    store.set_active(VERSION)
