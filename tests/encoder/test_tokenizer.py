"""Tokenizer: duration bins, log bins, stable hashing, vocabulary, config round trip."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from contract.events import Event
from encoder.tokenizer import (
    DAY,
    DURATION_EDGES_MS,
    HOUR,
    MINUTE,
    OOV,
    SECOND,
    WEEK,
    Tokenizer,
    TokenizerConfig,
    build_vocab,
    duration_bin,
    hash_bucket,
    log_bin,
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


def test_log_bins_dense_near_zero_coarse_in_tail() -> None:
    assert log_bin(0.0, 32, 4.0) == 1
    assert log_bin(1.0, 32, 4.0) != log_bin(3.0, 32, 4.0)  # small values apart
    assert log_bin(1000.0, 32, 4.0) == log_bin(1080.0, 32, 4.0)  # large values together
    assert log_bin(1e12, 32, 4.0) == 32  # clipped
    assert log_bin(float("nan"), 32, 4.0) == 1


def test_hash_is_stable_across_processes() -> None:
    here = hash_bucket("item", "i42", 20_000)
    code = "from encoder.tokenizer import hash_bucket; print(hash_bucket('item', 'i42', 20000))"
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert int(there) == here
    assert 1 <= here <= 20_000
    assert hash_bucket("item", "i42", 20_000) != hash_bucket("campaign", "i42", 20_000)


def test_window_tokens() -> None:
    cfg = TokenizerConfig(event_types=("view", "cart"), max_events=3)
    tok = Tokenizer(cfg)
    t = 1_700_000_000_000
    w = [
        Event("u", "e1", t, "view", {"item": "i7", "price": 9.5}),
        Event("u", "e2", t + 30 * SECOND, "cart", {"item": "i7", "device": "ios"}),
        Event("u", "e3", t + 40 * SECOND, "refund", {}),
    ]
    b = tok.encode([w, w[:1], []], now_ms=t + 2 * HOUR)
    names = cfg.feature_names
    col = {n: b.ids[names.index(n)] for n in names}
    assert b.lengths.tolist() == [3, 1, 0]
    assert b.ids.shape == (len(names), 4)
    assert col["type"][:3].tolist() == [2, 3, OOV]
    assert col["item"][0] == col["item"][1] == hash_bucket("item", "i7", 20_000)
    assert col["item"][2] == 0 and col["device"][0] == 0 and col["device"][1] > 0
    assert col["price"][0] == log_bin(9.5, 32, 4.0) and col["price"][1] == 0
    assert col["gap"][0] == 1 and col["gap"][1] == duration_bin(30 * SECOND, DURATION_EDGES_MS)
    assert col["age"][0] == duration_bin(2 * HOUR, DURATION_EDGES_MS)
    assert abs(float(b.age_h[0]) - math.log1p(2.0)) < 1e-5  # the exact age beside its bin
    assert b.age_h.shape == (4,) and b.age_h[1] < b.age_h[0]
    # only the last max_events are kept
    long = [Event("u", f"e{i}", t + i, "view", {}) for i in range(5)]
    assert tok.encode([long], t).lengths.tolist() == [3]


def test_vocab_and_config_round_trip() -> None:
    evs = [Event("u", str(i), i, t, {}) for i, t in enumerate(["a", "b", "b", "c", "b", "a"])]
    assert build_vocab(evs) == ("b", "a", "c")
    assert build_vocab(evs, min_count=2) == ("b", "a")
    cfg = TokenizerConfig(event_types=("b", "a"), max_events=64)
    again = TokenizerConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.num_embeddings()["type"] == 4
