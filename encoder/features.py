"""What the model reads from events: a profile of the training events and the feature spec
discovered from it. No property name is special: every property is found in the data.

Order of work:

1. `Profile.add` streams the training events once and, per property name, counts how often
   it carries a string or a number, its distinct values (exact up to `MAX_TRACKED` a
   property, then only counted) and a reservoir sample of its numbers; event types too.
2. `spec_from_profile` turns the profile into a `FeatureSpec`:
   - a property carried mostly as strings is *categorical*: its most frequent values get
     their own ids (a vocabulary of up to `max_vocab` values seen `min_value_count` times),
     every other value shares a hashed bucket, the bucket count sized from the remaining
     cardinality (bounded by `max_buckets`);
   - a property carried mostly as numbers is *numeric*: bin edges fitted to the data
     (one bin per value when it has at most `max_bins` distinct values, else quantiles);
     a numeric property whose values are all 0 or 1 is *bool* (a categorical of "0"/"1");
   - properties seen on fewer than `min_events` events, constants, and strings that are
     (nearly) unique per event are dropped, each with its reason in `FeatureSpec.dropped`;
   - features are ordered by how many events carry them (then cardinality, then name), so a
     renamed schema gives the same spec apart from the names.
3. An optional features file (`FeaturesFile`, JSON) pins, excludes or sizes properties.

Example: events ``{"sku": "a1", "amount": 3.5}``, ``{"sku": "a2", "amount": 9.0,
"member": 1}`` x many give ``categorical=[sku (vocab a1, a2, ...)]``, ``numeric=[amount
(quantile edges)]`` and ``member`` as bool.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from contract.events import Event

MAX_TRACKED = 1_000_000  # distinct values counted exactly per property
RESERVOIR = 20_000  # numbers kept per property for quantiles


def value_key(v: str | float) -> str:
    """The categorical key of a value: strings as they are, integral numbers without '.0'."""
    if isinstance(v, str):
        return v
    if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def hash_value(value: str, buckets: int) -> int:
    """0-based bucket of a value, stable across processes (crc32 of the value alone, so a
    renamed property hashes the same)."""
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) % buckets


@dataclass
class PropStats:
    """Running counts for one property name."""

    n_str: int = 0
    n_num: int = 0
    values: Counter[str] = field(default_factory=Counter)
    untracked: int = 0  # occurrences of values beyond MAX_TRACKED distinct ones
    reservoir: list[float] = field(default_factory=list)
    numbers_seen: int = 0
    bools_only: bool = True

    def add(self, v: str | float, rng: np.random.Generator) -> None:
        key = value_key(v)
        cap = MAX_TRACKED if isinstance(v, str) else 4096  # numbers: only to see bools
        if key in self.values or len(self.values) < cap:
            self.values[key] += 1
        else:
            self.untracked += 1
        if isinstance(v, str):
            self.n_str += 1
            return
        if not math.isfinite(v):
            return
        self.n_num += 1
        if v not in (0.0, 1.0):
            self.bools_only = False
        self.numbers_seen += 1
        if len(self.reservoir) < RESERVOIR:
            self.reservoir.append(float(v))
        else:  # Algorithm R
            j = int(rng.integers(0, self.numbers_seen))
            if j < RESERVOIR:
                self.reservoir[j] = float(v)


class Profile:
    """Counts over a stream of events (one pass; memory bounded per property)."""

    def __init__(self, seed: int = 0) -> None:
        self.events = 0
        self.types: Counter[str] = Counter()
        self.props: dict[str, PropStats] = {}
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self._rng = np.random.default_rng(seed)

    def add(self, e: Event) -> None:
        self.events += 1
        self.types[e.type] += 1
        self.first_ts = e.ts_ms if self.first_ts is None else min(self.first_ts, e.ts_ms)
        self.last_ts = e.ts_ms if self.last_ts is None else max(self.last_ts, e.ts_ms)
        for k, v in e.props.items():
            st = self.props.get(k)
            if st is None:
                st = self.props[k] = PropStats()
            st.add(v, self._rng)

    def add_all(self, events: Iterable[Event]) -> Profile:
        for e in events:
            self.add(e)
        return self


Kind = Literal["categorical", "bool", "numeric"]


@dataclass(frozen=True)
class Categorical:
    """A string (or bool) property. ids: 0 absent, 1..V the vocabulary (most frequent
    first), V+1..V+buckets every other value, hashed."""

    name: str
    vocab: tuple[str, ...]
    buckets: int
    kind: Literal["categorical", "bool"] = "categorical"
    distinct: int = 0  # distinct values seen in training (a lower bound past MAX_TRACKED)
    events: int = 0  # training events carrying it

    @property
    def rows(self) -> int:
        return 1 + len(self.vocab) + self.buckets


@dataclass(frozen=True)
class Numeric:
    """A numeric property. ids: 0 absent (or not a finite number), 1 + (edges <= x)."""

    name: str
    edges: tuple[float, ...]
    events: int = 0

    @property
    def rows(self) -> int:
        return len(self.edges) + 2


@dataclass(frozen=True)
class FeatureSpec:
    """The discovered schema: event types and the properties the model reads, in order."""

    event_types: tuple[str, ...] = ()
    categorical: tuple[Categorical, ...] = ()
    numeric: tuple[Numeric, ...] = ()
    dropped: tuple[tuple[str, str], ...] = ()  # (property, why)

    @property
    def property_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categorical) + tuple(n.name for n in self.numeric)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            event_types=tuple(d["event_types"]),
            categorical=tuple(
                Categorical(
                    name=c["name"],
                    vocab=tuple(c["vocab"]),
                    buckets=int(c["buckets"]),
                    kind=c.get("kind", "categorical"),
                    distinct=int(c.get("distinct", 0)),
                    events=int(c.get("events", 0)),
                )
                for c in d["categorical"]
            ),
            numeric=tuple(
                Numeric(n["name"], tuple(float(x) for x in n["edges"]), int(n.get("events", 0)))
                for n in d["numeric"]
            ),
            dropped=tuple((str(a), str(b)) for a, b in d.get("dropped", ())),
        )

    def summary(self) -> list[str]:
        """One line per feature, for `persona model show` and logs."""
        out = [f"type: {len(self.event_types)} event types"]
        for c in self.categorical:
            out.append(
                f"{c.name}: {c.kind}, {c.distinct} distinct, vocab {len(c.vocab)}, "
                f"{c.buckets} hashed buckets, on {c.events} events"
            )
        for n in self.numeric:
            out.append(f"{n.name}: numeric, {len(n.edges) + 1} bins, on {n.events} events")
        out += [f"{name}: dropped ({why})" for name, why in self.dropped]
        return out


@dataclass(frozen=True)
class SpecOptions:
    max_vocab: int = 100_000
    min_value_count: int = 5  # a value needs this many events for its own id
    max_buckets: int = 1 << 20
    values_per_bucket: int = 4  # rare values: they teach little alone, and as their own rows
    # they fingerprint users (memorised futures); a few share each hashed row
    min_buckets: int = 8
    max_bins: int = 32
    min_events: int = 20  # properties on fewer training events are dropped
    unique_share: float = 0.9  # strings unique on this share of their events are ids: dropped
    max_types: int = 1024  # event types kept in the vocabulary (most frequent first)


@dataclass(frozen=True)
class PropertyRule:
    kind: Kind | None = None
    buckets: int | None = None
    vocab: int | None = None
    bins: int | None = None


@dataclass(frozen=True)
class FeaturesFile:
    """Optional overrides, from JSON::

    {"include": ["sku", "amount"],          # only these (default: every property)
     "exclude": ["request_id"],
     "properties": {"sku": {"kind": "categorical", "vocab": 8192, "buckets": 65536},
                    "amount": {"kind": "numeric", "bins": 16}}}
    """

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    properties: dict[str, PropertyRule] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> FeaturesFile:
        d = json.loads(Path(path).read_text())
        unknown = set(d) - {"include", "exclude", "properties"}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        rules = {}
        for name, r in d.get("properties", {}).items():
            bad = set(r) - {"kind", "buckets", "vocab", "bins"}
            if bad or r.get("kind") not in (None, "categorical", "bool", "numeric"):
                raise ValueError(f"{path}: property {name!r}: bad rule {r}")
            rules[str(name)] = PropertyRule(**r)
        inc = d.get("include")
        return cls(
            include=tuple(inc) if inc is not None else None,
            exclude=tuple(d.get("exclude", ())),
            properties=rules,
        )


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _numeric_edges(st: PropStats, bins: int) -> tuple[float, ...]:
    vals = np.asarray(st.reservoir, dtype=np.float64)
    distinct = np.unique(vals)
    if len(distinct) <= bins:  # one bin per value: edges halfway between neighbours
        # halves first: the sum of two values near the float limit would be infinite
        return tuple(float(x) for x in distinct[:-1] / 2 + distinct[1:] / 2)
    qs = np.quantile(vals, np.arange(1, bins) / bins)
    return tuple(float(x) for x in np.unique(qs))


def _categorical(
    name: str,
    st: PropStats,
    opts: SpecOptions,
    rule: PropertyRule,
    kind: Literal["categorical", "bool"],
) -> Categorical:
    max_vocab = rule.vocab if rule.vocab is not None else opts.max_vocab
    ranked = sorted(st.values.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab: tuple[str, ...]
    if kind == "bool":
        vocab = ("0", "1")
    else:
        vocab = tuple(v for v, c in ranked[:max_vocab] if c >= opts.min_value_count)
    distinct = len(st.values) + (1 if st.untracked else 0)
    rest = max(distinct - len(vocab), 0) + st.untracked // 2  # rare values share buckets
    if rule.buckets is not None:
        buckets = rule.buckets
    elif kind == "bool":
        buckets = 1
    else:
        buckets = min(
            opts.max_buckets, max(opts.min_buckets, _pow2(rest // opts.values_per_bucket))
        )
    return Categorical(name, vocab, int(buckets), kind, distinct, st.n_str + st.n_num)


def spec_from_profile(
    profile: Profile, opts: SpecOptions | None = None, features: FeaturesFile | None = None
) -> FeatureSpec:
    """The feature spec for `profile` (see the module docstring for the rules)."""
    opts = opts or SpecOptions()
    features = features or FeaturesFile()
    types = tuple(t for t, _ in sorted(profile.types.items(), key=lambda kv: (-kv[1], kv[0])))
    cats: list[Categorical] = []
    nums: list[Numeric] = []
    dropped: list[tuple[str, str]] = []
    for name, st in profile.props.items():
        rule = features.properties.get(name, PropertyRule())
        n = st.n_str + st.n_num
        if name in features.exclude:
            dropped.append((name, "excluded by the features file"))
            continue
        if features.include is not None and name not in features.include:
            dropped.append((name, "not in the features file's include list"))
            continue
        pinned = rule.kind is not None
        if n < opts.min_events and not pinned:
            dropped.append((name, f"on {n} events (< {opts.min_events})"))
            continue
        kind: Kind = rule.kind or (
            "categorical" if st.n_str >= st.n_num else ("bool" if st.bools_only else "numeric")
        )
        if kind == "numeric":
            if not st.reservoir:
                dropped.append((name, "no numbers"))
                continue
            edges = _numeric_edges(st, rule.bins or opts.max_bins)
            if not edges and not pinned:
                dropped.append((name, "constant"))
                continue
            nums.append(Numeric(name, edges, st.n_num))
            continue
        if len(st.values) < 2 and not st.untracked and not pinned:
            dropped.append((name, "constant"))
            continue
        if (
            kind == "categorical"
            and not pinned
            and len(st.values) > 1000
            and len(st.values) + st.untracked >= opts.unique_share * n
        ):
            dropped.append((name, "an id: nearly every event has its own value"))
            continue
        cats.append(_categorical(name, st, opts, rule, kind))
    cats.sort(key=lambda c: (-c.events, -c.distinct, c.name))
    nums.sort(key=lambda x: (-x.events, -len(x.edges), x.name))
    return FeatureSpec(
        event_types=types[: opts.max_types],
        categorical=tuple(cats),
        numeric=tuple(nums),
        dropped=tuple(sorted(dropped)),
    )


def discover(
    events: Iterable[Event], opts: SpecOptions | None = None, features: FeaturesFile | None = None
) -> FeatureSpec:
    """Profile `events` and return their feature spec (one pass)."""
    return spec_from_profile(Profile().add_all(events), opts, features)


def renamed(spec: FeatureSpec, names: dict[str, str]) -> FeatureSpec:
    """The same spec with properties renamed (tests: a renamed schema is the same model)."""
    return replace(
        spec,
        categorical=tuple(replace(c, name=names.get(c.name, c.name)) for c in spec.categorical),
        numeric=tuple(replace(n, name=names.get(n.name, n.name)) for n in spec.numeric),
    )
