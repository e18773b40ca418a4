"""Events to model inputs: one id per event per feature, deterministic and versioned.

Features of one event (id 0 always means "absent"):

- ``type``: vocabulary built at training time; 1 is the out-of-vocabulary id.
- each categorical field (item, campaign, ...): the hashing trick, ``crc32(field=value)``
  modulo the field's bucket count, plus 1; unseen values need no vocabulary change.
- each numeric field (price, dwell_s): logarithmic bins, ``1 + floor(log1p(x) * per_e)``,
  dense near zero and coarse in the tail, clipped to the field's bin count.
- ``gap``: time since the previous event, ``age``: time before the encode time ``now_ms``;
  both in human-readable duration bins (1 s, 5 s, 15 s, 1 min, ... 1 d, 3 d, 1 w, 4 w),
  each 2-5x the one before. The first event of a window has gap id 1 ("no previous event").

Example: a window ``[app_open @ t, item_view(item=i7, price=9.5) @ t+30 s]`` encoded at
``now = t + 2 h`` gives for the second event ``type=id(item_view)``, ``item=1+crc32(...)%B``,
``price=1+floor(log1p(9.5)*4)=10``, ``gap=bin(30 s)``, ``age=bin(~2 h)``.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from contract.events import Event

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY

# Upper edges of the duration bins (ms), each 2-5x the one before.
DURATION_EDGES_MS: tuple[int, ...] = (
    1 * SECOND,
    5 * SECOND,
    15 * SECOND,
    1 * MINUTE,
    5 * MINUTE,
    15 * MINUTE,
    1 * HOUR,
    3 * HOUR,
    12 * HOUR,
    1 * DAY,
    3 * DAY,
    1 * WEEK,
    2 * WEEK,
    4 * WEEK,
)

OOV = 1  # type id of an event type not in the vocabulary


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything that fixes the event -> ids mapping; saved with each model version."""

    event_types: tuple[str, ...] = ()
    categorical: tuple[tuple[str, int], ...] = (
        ("item", 20_000),
        ("campaign", 2_000),
        ("advertiser", 1_000),
        ("page", 1_000),
        ("device", 32),
        ("country", 256),
    )
    numeric: tuple[tuple[str, int], ...] = (("price", 32), ("dwell_s", 32))
    numeric_bins_per_e: float = 4.0  # bins per factor e of (1 + x)
    duration_edges_ms: tuple[int, ...] = DURATION_EDGES_MS
    max_events: int = 64  # the newest events of the stored window that the model reads

    @property
    def feature_names(self) -> tuple[str, ...]:
        cats = tuple(n for n, _ in self.categorical)
        nums = tuple(n for n, _ in self.numeric)
        return ("type", *cats, *nums, "gap", "age")

    def num_embeddings(self) -> dict[str, int]:
        """Rows each feature's table needs (ids are 0..rows-1)."""
        out = {"type": len(self.event_types) + 2}
        out.update({n: b + 1 for n, b in self.categorical})
        out.update({n: b + 1 for n, b in self.numeric})
        out["gap"] = len(self.duration_edges_ms) + 3  # 0 absent, 1 first event, 2.. bins
        out["age"] = len(self.duration_edges_ms) + 3
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TokenizerConfig:
        d = json.loads(text)
        return cls(
            event_types=tuple(d["event_types"]),
            categorical=tuple((str(n), int(b)) for n, b in d["categorical"]),
            numeric=tuple((str(n), int(b)) for n, b in d["numeric"]),
            numeric_bins_per_e=float(d["numeric_bins_per_e"]),
            duration_edges_ms=tuple(int(x) for x in d["duration_edges_ms"]),
            max_events=int(d["max_events"]),
        )


def build_vocab(events: Iterable[Event], min_count: int = 1) -> tuple[str, ...]:
    """Event types seen at least `min_count` times, most frequent first (ties by name)."""
    counts: dict[str, int] = {}
    for e in events:
        counts[e.type] = counts.get(e.type, 0) + 1
    kept = [t for t, c in counts.items() if c >= min_count]
    return tuple(sorted(kept, key=lambda t: (-counts[t], t)))


def hash_bucket(field_name: str, value: str, buckets: int) -> int:
    """Stable across processes and machines (crc32, not Python's salted `hash`)."""
    return 1 + zlib.crc32(f"{field_name}={value}".encode()) % buckets


def log_bin(x: float, bins: int, per_e: float) -> int:
    """1-based logarithmic bin of a non-negative number, clipped to `bins`."""
    if not math.isfinite(x) or x < 0:
        x = 0.0
    return 1 + min(bins - 1, int(math.log1p(x) * per_e))


def duration_bin(ms: int, edges: Sequence[int]) -> int:
    """Bin id (2..len(edges)+2) of a duration; negative durations count as zero."""
    lo, hi = 0, len(edges)
    ms = max(ms, 0)
    while lo < hi:  # first edge >= ms
        mid = (lo + hi) // 2
        if edges[mid] < ms:
            lo = mid + 1
        else:
            hi = mid
    return 2 + lo


@dataclass
class TokenBatch:
    """Jagged ids for B windows: ``ids[f]`` holds the f-th feature of all events in order.

    Attributes:
        ids: (F, N) int64, N = total events, features in `TokenizerConfig.feature_names`.
        lengths: (B,) events per window (each at most max_events, may be 0).
        ts_ms: (N,) event times, kept for building training targets.
        age_h: (N,) float32 ``log1p(hours before now)``: the exact age beside its bin.
    """

    ids: np.ndarray
    lengths: np.ndarray
    ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    age_h: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])


class Tokenizer:
    """Turns windows of events into `TokenBatch`es. Pure function of its config."""

    def __init__(self, config: TokenizerConfig) -> None:
        self.config = config
        self._type_id = {t: i + 2 for i, t in enumerate(config.event_types)}
        self._cache: dict[tuple[str, str], int] = {}
        self._cats = config.categorical
        self._nums = config.numeric

    def _cat(self, name: str, value: str, buckets: int) -> int:
        key = (name, value)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 1_000_000:
                self._cache.clear()
            hit = self._cache[key] = hash_bucket(name, value, buckets)
        return hit

    def event_ids(self, e: Event) -> list[int]:
        """Type, categorical and numeric ids of one event (no time features)."""
        row = [self._type_id.get(e.type, OOV)]
        props = e.props
        for name, buckets in self._cats:
            v = props.get(name)
            row.append(0 if v is None else self._cat(name, str(v), buckets))
        for name, bins in self._nums:
            v = props.get(name)
            if v is None or isinstance(v, str):
                row.append(0)
            else:
                row.append(log_bin(float(v), bins, self.config.numeric_bins_per_e))
        return row

    def encode(self, windows: Sequence[Sequence[Event]], now_ms: int | Sequence[int]) -> TokenBatch:
        """Tokenize windows (each in window order; only the last `max_events` are kept).

        Args:
            windows: B lists of events, oldest first.
            now_ms: the encode time, one for all windows or one per window (age feature).
        """
        cfg = self.config
        nows = [now_ms] * len(windows) if isinstance(now_ms, int) else list(now_ms)
        edges = cfg.duration_edges_ms
        rows: list[list[int]] = []
        ts: list[int] = []
        lengths = np.zeros(len(windows), dtype=np.int64)
        for b, window in enumerate(windows):
            w = window[-cfg.max_events :] if len(window) > cfg.max_events else window
            lengths[b] = len(w)
            prev: int | None = None
            for e in w:
                row = self.event_ids(e)
                row.append(1 if prev is None else duration_bin(e.ts_ms - prev, edges))
                row.append(duration_bin(nows[b] - e.ts_ms, edges))
                prev = e.ts_ms
                rows.append(row)
                ts.append(e.ts_ms)
        n_feat = len(cfg.feature_names)
        ids = np.asarray(rows, dtype=np.int64).reshape(-1, n_feat).T.copy()  # (F, N)
        ts_arr = np.asarray(ts, dtype=np.int64)  # (N,)
        now_arr = np.repeat(np.asarray(nows, dtype=np.int64), lengths)  # (N,)
        age_h = np.log1p(np.maximum(now_arr - ts_arr, 0) / HOUR).astype(np.float32)
        return TokenBatch(ids=ids, lengths=lengths, ts_ms=ts_arr, age_h=age_h)
