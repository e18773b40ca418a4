"""Feature discovery: kinds, sizes, what is dropped and why, the features file, renaming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contract.events import Event
from encoder.datasets import RENAMES, synthetic_log
from encoder.features import (
    FeaturesFile,
    Profile,
    SpecOptions,
    discover,
    renamed,
    spec_from_profile,
)
from encoder.synthetic import SyntheticConfig


def _events(n: int = 400) -> list[Event]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        props: dict[str, str | float] = {
            "sku": f"s{int(rng.zipf(1.5)) % 300}",  # strings, skewed: categorical
            "amount": float(rng.lognormal(3, 1)),  # continuous: quantile bins
            "stars": float(rng.integers(1, 6)),  # five values: one bin each
            "member": float(i % 2),  # 0 / 1: bool
            "request": f"r{i}",  # unique per event: an id
            "colour": "red",  # constant
        }
        if i < 5:
            props["rare"] = "x"
        out.append(Event(f"u{i % 20}", f"e{i}", 1_000 + i, "view" if i % 3 else "buy", props))
    return out


def test_kinds_sizes_and_drops() -> None:
    opts = SpecOptions(min_events=20, max_bins=16, min_value_count=3)
    spec = discover(_events(2_000), opts)
    cats = {c.name: c for c in spec.categorical}
    nums = {n.name: n for n in spec.numeric}
    dropped = dict(spec.dropped)
    assert spec.event_types == ("view", "buy")  # most frequent first
    assert set(cats) == {"sku", "member"} and set(nums) == {"amount", "stars"}
    assert cats["member"].kind == "bool" and cats["member"].vocab == ("0", "1")
    sku = cats["sku"]
    assert sku.kind == "categorical" and sku.vocab[0] == "s1"  # the most frequent value first
    counts = {v: 0 for v in sku.vocab}
    for e in _events(2_000):
        if e.props["sku"] in counts:
            counts[str(e.props["sku"])] += 1
    assert min(counts.values()) >= 3  # only values seen often enough get their own id
    rest = sku.distinct - len(sku.vocab)
    assert sku.buckets >= max(8, rest // opts.values_per_bucket)  # sized from the rest
    assert sku.rows == 1 + len(sku.vocab) + sku.buckets
    assert nums["stars"].edges == (1.5, 2.5, 3.5, 4.5)  # one bin per value
    assert 8 <= len(nums["amount"].edges) <= 15  # quantiles
    assert "id" in dropped["request"] and "constant" in dropped["colour"]
    assert "5 events" in dropped["rare"]
    assert any("sku" in line for line in spec.summary())


def test_features_file_pins_excludes_and_sizes(tmp_path: Path) -> None:
    f = tmp_path / "features.json"
    f.write_text(
        json.dumps(
            {
                "exclude": ["amount"],
                "properties": {
                    "stars": {"kind": "categorical", "vocab": 2},
                    "sku": {"buckets": 64},
                    "rare": {"kind": "categorical"},
                },
            }
        )
    )
    spec = discover(_events(), features=FeaturesFile.load(f))
    cats = {c.name: c for c in spec.categorical}
    assert "amount" in dict(spec.dropped) and "amount" not in spec.property_names
    assert cats["stars"].kind == "categorical" and len(cats["stars"].vocab) == 2
    assert cats["sku"].buckets == 64
    assert "rare" in cats  # pinned: kept although it is on 5 events
    only = tmp_path / "only.json"
    only.write_text(json.dumps({"include": ["sku"]}))
    assert discover(_events(), features=FeaturesFile.load(only)).property_names == ("sku",)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"propertes": {}}))
    with pytest.raises(ValueError, match="unknown keys"):
        FeaturesFile.load(bad)


def test_a_renamed_schema_gives_the_same_spec() -> None:
    cfg = SyntheticConfig(users=60, events_per_user=30.0, seed=3)
    plain, _ = synthetic_log(cfg, renames={}, future=False)
    other, _ = synthetic_log(cfg, future=False)
    a, b = discover(plain), discover(other)
    assert renamed(a, RENAMES) == b
    assert set(a.property_names).isdisjoint(b.property_names)


def test_profile_streams_and_tracks_time_range() -> None:
    p = Profile()
    for e in _events(50):
        p.add(e)
    assert p.events == 50 and (p.first_ts, p.last_ts) == (1_000, 1_049)
    assert spec_from_profile(p, SpecOptions(min_events=1)).event_types == ("view", "buy")
