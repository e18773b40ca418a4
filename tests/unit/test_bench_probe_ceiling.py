"""The probe-ceiling benchmark's hand-made extras (benchmarks/probe_ceiling.py): windows
trimmed as the evaluation trims them, and the per-value habits read from them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from probe_ceiling import habits, windows

from contract.events import Event
from encoder.evaluate_log import LogEvalConfig
from encoder.io import write_events_jsonl
from encoder.tokenizer import DAY, HOUR

SPLIT = 100 * DAY


def test_windows_trim_like_the_store_and_stop_at_the_split(tmp_path: Path) -> None:
    evs = [Event("a", f"e{i}", SPLIT - (40 - i) * DAY, "buy", {"sku": f"s{i}", "n": 1.0})
           for i in range(40)]  # fmt: skip
    evs.append(Event("a", "late", SPLIT, "buy", {"sku": "future"}))
    evs.append(Event("b", "b0", SPLIT - DAY, "view", {"sku": "s0"}))
    path = tmp_path / "log.jsonl"
    write_events_jsonl(path, evs)
    cfg = LogEvalConfig(split_at=SPLIT, window_events=20, window_ms=30 * DAY)
    got = windows(path, ["a", "b"], cfg)
    # a: the newest 20 of the 31 events within 30 days of its newest; nothing at the split
    assert [ts for ts, _ in got["a"]] == [SPLIT - (40 - i) * DAY for i in range(20, 40)]
    assert got["a"][-1][1] == ["type=buy", "sku=s39"]  # numbers are not categorical values
    assert got["b"] == [(SPLIT - DAY, ["type=view", "sku=s0"])]


def test_habits_share_of_timestamps_and_hours_since_last() -> None:
    win = [(SPLIT - 10 * HOUR, ["sku=x"]), (SPLIT - 10 * HOUR, ["sku=y"]),
           (SPLIT - 2 * HOUR, ["sku=y"])]  # fmt: skip
    out = habits([win, []], ["(any)", "sku=x", "sku=y"], SPLIT)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[0], [0.5, np.log1p(10), 1.0, np.log1p(2)])
    np.testing.assert_allclose(out[1], [0.0, np.log1p(720), 0.0, np.log1p(720)])
