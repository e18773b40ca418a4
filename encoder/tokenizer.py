"""Events to model inputs: one id per event per feature, deterministic and versioned.

The features come from the discovered `FeatureSpec` (see `encoder/features.py`); id 0
always means "absent". Feature keys inside the model are positional (``type``, ``c0``..,
``n0``.., ``gap``, ``age``), never property names, so any name works.

- ``type``: the spec's event types; 1 is the out-of-vocabulary id.
- ``c<i>``: categorical property i: its vocabulary id, else a hashed bucket.
- ``n<i>``: numeric property i: ``1 + (number of bin edges <= x)``.
- ``gap``: time since the previous event, ``age``: time before the encode time ``now_ms``;
  both in human-readable duration bins (1 s, 5 s, 15 s, 1 min, ... 1 d, 3 d, 1 w, 4 w),
  each 2-5x the one before. The first event of a window has gap id 1 ("no previous event").

A property the spec does not know is skipped and counted in `Tokenizer.unknown` (by name,
at most `MAX_UNKNOWN_NAMES` names, the rest under ``"(other)"``), for the refresher's metric.

Example: spec ``types=(view, buy)``, ``c0 = sku`` with vocab ``(a1, a2)`` and 8 buckets,
``n0 = amount`` with edges ``(5.0, 20.0)``. The window ``[view(sku=a2) @ t,
buy(sku=zz, amount=9.5) @ t+30 s]`` encoded at ``now = t + 2 h`` gives for the second event
``type=3, c0=1+2+crc32("zz")%8, n0=2, gap=bin(30 s), age=bin(~2 h)``.
"""

from __future__ import annotations

import json
import math
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter

import numpy as np

from contract.events import Event
from encoder.columnar import Columns
from encoder.features import FeatureSpec, hash_value, value_key

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
FORMAT = 2  # tokenizer.json format; 1 (fixed property names) is no longer loadable
MAX_UNKNOWN_NAMES = 64
_TYPE, _TS = attrgetter("type"), attrgetter("ts_ms")


class TokenizerFormatError(ValueError):
    """A saved tokenizer this code cannot read (a version from before feature discovery)."""


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything that fixes the event -> ids mapping; saved with each model version."""

    features: FeatureSpec = field(default_factory=FeatureSpec)
    duration_edges_ms: tuple[int, ...] = DURATION_EDGES_MS
    max_events: int = 64  # the newest events of the stored window that the model reads

    @property
    def event_types(self) -> tuple[str, ...]:
        return self.features.event_types

    @property
    def static_names(self) -> tuple[str, ...]:
        """Keys of the per-event features (no time features), in row order."""
        cats = tuple(f"c{i}" for i in range(len(self.features.categorical)))
        nums = tuple(f"n{i}" for i in range(len(self.features.numeric)))
        return ("type", *cats, *nums)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return (*self.static_names, "gap", "age")

    def num_embeddings(self) -> dict[str, int]:
        """Rows each feature's table needs (ids are 0..rows-1)."""
        out = {"type": len(self.event_types) + 2}
        out.update({f"c{i}": c.rows for i, c in enumerate(self.features.categorical)})
        out.update({f"n{i}": n.rows for i, n in enumerate(self.features.numeric)})
        out["gap"] = len(self.duration_edges_ms) + 3  # 0 absent, 1 first event, 2.. bins
        out["age"] = len(self.duration_edges_ms) + 3
        return out

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "features": self.features.to_dict(),
                "duration_edges_ms": list(self.duration_edges_ms),
                "max_events": self.max_events,
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> TokenizerConfig:
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise TokenizerFormatError(
                f"tokenizer format {d.get('format', 1)} is not readable by this version "
                f"(format {FORMAT}, properties discovered from the data): retrain the model"
            )
        return cls(
            features=FeatureSpec.from_dict(d["features"]),
            duration_edges_ms=tuple(int(x) for x in d["duration_edges_ms"]),
            max_events=int(d["max_events"]),
        )


def build_vocab(events: Iterable[Event], min_count: int = 1) -> tuple[str, ...]:
    """Event types seen at least `min_count` times, most frequent first (ties by name)."""
    counts: Counter[str] = Counter(e.type for e in events)
    kept = [t for t, c in counts.items() if c >= min_count]
    return tuple(sorted(kept, key=lambda t: (-counts[t], t)))


def duration_bin(ms: int, edges: Sequence[int]) -> int:
    """Bin id (2..len(edges)+2) of a duration; negative durations count as zero."""
    return 2 + int(np.searchsorted(np.asarray(edges), max(ms, 0), side="left"))


def duration_bins(ms: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """`duration_bin` of many durations at once. (N,) int64 -> (N,) int64."""
    return 2 + np.searchsorted(edges, np.maximum(ms, 0), side="left")


def time_ids(
    ts: np.ndarray, lengths: np.ndarray, nows: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gap ids, age ids and exact log ages of jagged windows.

    Args:
        ts: (N,) event times, windows concatenated, each oldest first.
        lengths: (B,) events per window.
        nows: (B,) encode time per window.

    Returns:
        gap (N,), age (N,) int64 ids and age_h (N,) float32 ``log1p(hours before now)``.
    """
    n = len(ts)
    gap = np.ones(n, dtype=np.int64)
    if n > 1:
        gap[1:] = duration_bins(np.diff(ts), edges)
    starts = np.cumsum(lengths) - lengths
    gap[starts[lengths > 0]] = 1  # first event of each window: "no previous event"
    now_arr = np.repeat(nows.astype(np.int64), lengths)  # (N,)
    age_ms = now_arr - ts
    age = duration_bins(age_ms, edges)
    age_h = np.log1p(np.maximum(age_ms, 0) / HOUR).astype(np.float32)
    return gap, age, age_h


@dataclass
class TokenBatch:
    """Jagged ids for B windows: ``ids[f]`` holds the f-th feature of all events in order.

    Attributes:
        ids: (F, N) int64, N = total events, features in `TokenizerConfig.feature_names`.
        lengths: (B,) events per window (each at most max_events, may be 0).
        ts_ms: (N,) event times.
        age_h: (N,) float32 ``log1p(hours before now)``: the exact age beside its bin.
    """

    ids: np.ndarray
    lengths: np.ndarray
    ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    age_h: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])


def assemble(
    static: np.ndarray, ts: np.ndarray, lengths: np.ndarray, nows: np.ndarray, edges: np.ndarray
) -> TokenBatch:
    """A `TokenBatch` from per-event static ids (N, S) and the windows' times."""
    gap, age, age_h = time_ids(ts, lengths, nows, edges)
    ids = np.empty((static.shape[1] + 2, len(ts)), dtype=np.int64)  # (F, N)
    ids[:-2] = static.T
    ids[-2], ids[-1] = gap, age
    return TokenBatch(ids=ids, lengths=lengths.astype(np.int64), ts_ms=ts, age_h=age_h)


class Tokenizer:
    """Turns events into ids. Pure function of its config, apart from the unknown counts."""

    def __init__(self, config: TokenizerConfig) -> None:
        self.config = config
        spec = config.features
        self._type_id = {t: i + 2 for i, t in enumerate(spec.event_types)}
        self._cats = [
            (c.name, {v: i + 1 for i, v in enumerate(c.vocab)}, 1 + len(c.vocab), c.buckets)
            for c in spec.categorical
        ]
        self._nums = [(n.name, list(n.edges)) for n in spec.numeric]
        self._known = frozenset(spec.property_names)
        self._edges = np.asarray(config.duration_edges_ms, dtype=np.int64)
        self._hashed: dict[tuple[int, str], int] = {}
        self.unknown: Counter[str] = Counter()
        self._counting = threading.Lock()  # an encoder's stream threads share this tokenizer
        self._columns = Columns(spec)

    @property
    def n_static(self) -> int:
        return 1 + len(self._cats) + len(self._nums)

    def cat_id(self, c: int, key: str) -> int:
        """Id of the key `key` (`value_key` of a value) of categorical property c: its
        vocabulary id, else its hashed bucket."""
        _, vocab, base, buckets = self._cats[c]
        i = vocab.get(key)
        if i is not None:
            return i
        hit = self._hashed.get((c, key))
        if hit is None:
            if len(self._hashed) > 1_000_000:
                self._hashed.clear()
            hit = self._hashed[(c, key)] = base + hash_value(key, buckets)
        return hit

    def static_ids(self, e: Event) -> list[int]:
        """Type, categorical and numeric ids of one event (no time features)."""
        row = [self._type_id.get(e.type, OOV)]
        props = e.props
        found = 0
        for c, (name, vocab, _, _) in enumerate(self._cats):
            v = props.get(name)
            if v is None:
                row.append(0)
                continue
            found += 1
            key = v if isinstance(v, str) else value_key(v)
            i = vocab.get(key)
            row.append(i if i is not None else self.cat_id(c, key))
        for name, edges in self._nums:
            v = props.get(name)
            if v is None:
                row.append(0)
                continue
            found += 1
            ok = not isinstance(v, str) and math.isfinite(v)
            row.append(1 + bisect_right(edges, float(v)) if ok else 0)
        if found < len(props):
            self._count_unknown(props)
        return row

    def _count_unknown(self, *events_props: Iterable[str]) -> None:
        with self._counting:
            for props in events_props:
                for k in props:
                    if k not in self._known:
                        if k in self.unknown or len(self.unknown) < MAX_UNKNOWN_NAMES:
                            self.unknown[k] += 1
                        else:
                            self.unknown["(other)"] += 1

    def take_unknown(self) -> dict[str, int]:
        """Counts of unknown properties since the last call (and reset them)."""
        with self._counting:
            out = dict(self.unknown)
            self.unknown.clear()
        return out

    def static_matrix(self, events: Sequence[Event]) -> np.ndarray:
        """(N, S) int32 static ids of `events`: `static_ids` of each, column by column (the
        properties converted to Arrow columns in C: `encoder/columnar.py`)."""
        n = len(events)
        out = np.zeros((n, self.n_static), dtype=np.int32)
        if not n:
            return out
        props = [e.props for e in events]
        types = map(self._type_id.get, map(_TYPE, events), repeat(OOV))  # C-level loops
        out[:, 0] = np.fromiter(types, np.int32, n)
        found = self._columns.fill(props, out, self.cat_id)
        sizes = np.fromiter(map(len, props), np.int64, n)
        self._count_unknown(*(props[i] for i in np.flatnonzero(found < sizes)))
        return out

    def encode(
        self, windows: Sequence[Sequence[Event]], now_ms: int | Sequence[int] | np.ndarray
    ) -> TokenBatch:
        """Tokenize windows (each in window order; only the last `max_events` are kept).

        Args:
            windows: B lists of events, oldest first.
            now_ms: the encode time, one for all windows or one per window (age feature).
        """
        m = self.config.max_events
        cut = [w[-m:] if len(w) > m else w for w in windows]
        flat = [e for w in cut for e in w]
        nows = np.broadcast_to(np.asarray(now_ms, dtype=np.int64), (len(windows),))
        lengths = np.fromiter((len(w) for w in cut), dtype=np.int64, count=len(cut))
        ts = np.fromiter(map(_TS, flat), dtype=np.int64, count=len(flat))
        return assemble(self.static_matrix(flat), ts, lengths, nows, self._edges)
