"""Tokenizer: duration bins, stable hashing, ids from a feature spec, unknown properties,
config round trip."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.events import Event
from encoder.features import Categorical, FeatureSpec, Numeric, hash_value
from encoder.tokenizer import (
    DAY,
    DURATION_EDGES_MS,
    HOUR,
    MAX_UNKNOWN_NAMES,
    MINUTE,
    OOV,
    SECOND,
    WEEK,
    Tokenizer,
    TokenizerConfig,
    TokenizerFormatError,
    duration_bin,
)


def test_duration_edges_grow_2_to_5x() -> None:
    ratios = [b / a for a, b in itertools.pairwise(DURATION_EDGES_MS)]
    assert all(2.0 <= r <= 5.0 for r in ratios), ratios


def test_duration_bins_human_readable() -> None:
    e = DURATION_EDGES_MS
    assert duration_bin(0, e) == 2
    assert duration_bin(-5, e) == 2  # clock skew counts as zero
    assert duration_bin(30 * SECOND, e) == duration_bin(59 * SECOND, e)
    assert duration_bin(30 * SECOND, e) < duration_bin(2 * MINUTE, e)
    assert duration_bin(2 * HOUR, e) < duration_bin(2 * DAY, e) < duration_bin(10 * DAY, e)
    assert duration_bin(100 * WEEK, e) == len(e) + 2  # beyond the last edge: one tail bin


@given(st.integers(0, 10**11), st.integers(0, 10**11))
def test_duration_bins_monotone(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert duration_bin(lo, DURATION_EDGES_MS) <= duration_bin(hi, DURATION_EDGES_MS)


def test_hash_is_stable_across_processes() -> None:
    here = hash_value("i42", 20_000)
    code = "from encoder.features import hash_value; print(hash_value('i42', 20000))"
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert int(there) == here
    assert 0 <= here < 20_000


SPEC = FeatureSpec(
    event_types=("view", "cart"),
    categorical=(
        Categorical("item", vocab=("i7", "i8"), buckets=16),
        Categorical("member", vocab=("0", "1"), buckets=1, kind="bool"),
    ),
    numeric=(Numeric("price", edges=(5.0, 20.0)),),
)


def test_window_tokens() -> None:
    cfg = TokenizerConfig(features=SPEC, max_events=3)
    tok = Tokenizer(cfg)
    t = 1_700_000_000_000
    w = [
        Event("u", "e1", t, "view", {"item": "i8", "price": 9.5, "member": 1.0}),
        Event("u", "e2", t + 30 * SECOND, "cart", {"item": "zz", "price": 25.0}),
        Event("u", "e3", t + 40 * SECOND, "refund", {"price": "n/a"}),
    ]
    b = tok.encode([w, w[:1], []], now_ms=t + 2 * HOUR)
    names = cfg.feature_names
    assert names == ("type", "c0", "c1", "n0", "gap", "age")  # positional, never prop names
    col = {n: b.ids[names.index(n)] for n in names}
    assert b.lengths.tolist() == [3, 1, 0]
    assert b.ids.shape == (len(names), 4)
    assert col["type"][:3].tolist() == [2, 3, OOV]
    assert col["c0"][0] == 2  # vocabulary id of i8
    assert col["c0"][1] == 1 + 2 + hash_value("zz", 16)  # past the vocabulary: hashed
    assert col["c0"][2] == 0 and col["c1"][0] == 2 and col["c1"][1] == 0
    assert col["n0"][:3].tolist() == [2, 3, 0]  # 9.5 in (5, 20]; 25 above; a string: absent
    assert col["gap"][0] == 1 and col["gap"][1] == duration_bin(30 * SECOND, DURATION_EDGES_MS)
    assert col["age"][0] == duration_bin(2 * HOUR, DURATION_EDGES_MS)
    assert abs(float(b.age_h[0]) - math.log1p(2.0)) < 1e-5  # the exact age beside its bin
    assert b.age_h.shape == (4,) and b.age_h[1] < b.age_h[0]
    assert col["gap"][3] == 1  # the first event of the second window has no previous one
    # only the last max_events are kept
    long = [Event("u", f"e{i}", t + i, "view", {}) for i in range(5)]
    assert tok.encode([long], t).lengths.tolist() == [3]


def test_unknown_properties_are_skipped_and_counted() -> None:
    tok = Tokenizer(TokenizerConfig(features=SPEC))
    e = Event("u", "e1", 1, "view", {"item": "i7", "coupon": "x", "score": 3.0})
    known = Tokenizer(TokenizerConfig(features=SPEC)).static_ids(
        Event("u", "e1", 1, "view", {"item": "i7"})
    )
    assert tok.static_ids(e) == known  # unknown properties change nothing ...
    tok.static_ids(e)
    assert tok.take_unknown() == {"coupon": 2, "score": 2}  # ... and are counted by name
    assert tok.take_unknown() == {}
    many = Event("u", "e2", 1, "view", {f"p{i}": "v" for i in range(200)})
    tok.static_ids(many)
    counts = tok.take_unknown()
    assert len(counts) == MAX_UNKNOWN_NAMES + 1 and counts["(other)"] == 200 - MAX_UNKNOWN_NAMES


def test_config_round_trip_and_old_format_refused() -> None:
    cfg = TokenizerConfig(features=SPEC, max_events=64)
    again = TokenizerConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.num_embeddings() == {
        "type": 4, "c0": 1 + 2 + 16, "c1": 1 + 2 + 1, "n0": 4, "gap": 17, "age": 17
    }  # fmt: skip
    old = json.dumps({"event_types": ["a"], "categorical": [["item", 10]], "numeric": []})
    with pytest.raises(TokenizerFormatError, match="retrain"):
        TokenizerConfig.from_json(old)


_VALUES = st.one_of(
    st.none(),
    st.sampled_from(["i7", "i8", "0", "1", "x", ""]),
    st.text(max_size=3),
    st.booleans(),
    st.integers(-50, 50),
    st.floats(allow_nan=True, allow_infinity=True),
)
_NAMES = st.sampled_from(["item", "member", "price", "other", "zz"])


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["view", "cart", "new"]),
            st.dictionaries(_NAMES, _VALUES, max_size=4),
        ),
        max_size=12,
    )
)
def test_static_matrix_equals_static_ids_event_by_event(rows: list) -> None:  # type: ignore[type-arg]
    """The column-by-column batch path gives every event the ids (and the unknown-property
    counts) that the event-by-event reference gives."""
    events = [
        Event("u", f"e{i}", i, t, {k: v for k, v in p.items() if v is not None})
        for i, (t, p) in enumerate(rows)
    ]
    cfg = TokenizerConfig(features=SPEC, max_events=3)
    batch, single = Tokenizer(cfg), Tokenizer(cfg)
    got = batch.static_matrix(events)
    want = [single.static_ids(e) for e in events]
    assert got.shape == (len(events), batch.n_static)
    assert got.tolist() == want
    assert batch.take_unknown() == single.take_unknown()


_TYPED = st.fixed_dictionaries(
    {},
    optional={
        "item": st.one_of(st.sampled_from(["i7", "i8", "x", ""]), st.text(max_size=3)),
        "member": st.one_of(st.booleans(), st.sampled_from([0, 1, 0.0, 1.0, 2, 0.5])),
        "price": st.one_of(st.integers(-50, 50), st.floats(allow_nan=True)),
        "zz": st.text(max_size=2),
    },
)


@given(st.lists(st.tuples(st.sampled_from(["view", "cart", "new"]), _TYPED), max_size=12))
def test_arrow_columns_equal_static_ids(rows: list) -> None:  # type: ignore[type-arg]
    """Values of the spec's kinds (strings; a bool property's numbers; numbers, NaN and
    infinities) are all read as Arrow columns, and get the event-by-event ids and the same
    unknown-property counts."""
    events = [Event("u", f"e{i}", i, t, p) for i, (t, p) in enumerate(rows)]
    cfg = TokenizerConfig(features=SPEC)
    batch, single = Tokenizer(cfg), Tokenizer(cfg)
    got = batch.static_matrix(events)
    assert got.tolist() == [single.static_ids(e) for e in events]
    assert batch.take_unknown() == single.take_unknown()
    if events:
        assert batch._columns.python == ()  # noqa: SLF001 (no column left to Python)


def test_a_value_of_the_other_kind_leaves_only_its_column_to_python() -> None:
    good = Event("u", "e1", 1, "view", {"item": "i8", "price": 9.5, "member": True})
    odd = [
        (Event("u", "e2", 2, "view", {"item": 7.0}), ("item",)),  # a number in a string column
        (Event("u", "e3", 3, "view", {"price": "n/a"}), ("price",)),  # a string, numeric one
        (Event("u", "e4", 4, "view", {"member": "yes"}), ("member",)),  # a string, bool one
        (Event("u", "e5", 5, "view", {"price": 2**70, "item": 3}), ("item", "price")),
    ]
    tok = Tokenizer(TokenizerConfig(features=SPEC))
    for e, columns in odd:
        got = tok.static_matrix([good, e])
        assert tok._columns.python == columns  # noqa: SLF001
        assert got.tolist() == [tok.static_ids(x) for x in (good, e)]
