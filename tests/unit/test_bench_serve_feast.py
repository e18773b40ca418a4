"""The Feast comparison's bookkeeping (benchmarks/serve_feast.py), without Feast: the order
the paths take turns in, and the summary's percentiles, ratios and verdicts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import serve_feast
from serve_feast import HTTP, PERSONA, SDK


class FakePeer:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def time(self, path: str, seconds: float) -> list[float]:
        self.log.append(path)
        return [0.010 if path == SDK else 0.040]


def test_paths_take_turns_and_the_first_turns_each_round(monkeypatch: Any) -> None:
    log: list[str] = []

    def timed(call: Any, seconds: float) -> list[float]:
        log.append(PERSONA)
        return [0.002]

    monkeypatch.setattr(serve_feast, "timed", timed)
    out = serve_feast.rounds_of(lambda i: None, FakePeer(log), 3, 0.1)  # type: ignore[arg-type]
    assert log == [PERSONA, SDK, HTTP, SDK, HTTP, PERSONA, HTTP, PERSONA, SDK]
    assert out == {PERSONA: [[0.002]] * 3, SDK: [[0.010]] * 3, HTTP: [[0.040]] * 3}


def test_summary_pools_rounds_and_judges_the_p50_ratios() -> None:
    samples = {
        PERSONA: [[0.002, 0.002], [0.004, 0.004]],  # pooled p50 3 ms, rounds 2 and 4
        SDK: [[0.006], [0.006]],  # 3/6 = 0.5: met (at most 0.5)
        HTTP: [[0.020], [0.020]],  # 3/20 = 0.15: not met (at most 0.1)
    }
    s = serve_feast.summary(samples)
    assert s[PERSONA]["p50"] == pytest.approx(3.0)
    assert s[PERSONA]["rounds"] == pytest.approx([2.0, 4.0])
    assert s[PERSONA]["calls"] == 4
    assert "ratio" not in s[PERSONA]
    assert s[SDK]["ratio"] == pytest.approx(0.5) and s[SDK]["met"]
    assert s[HTTP]["ratio"] == pytest.approx(0.15) and not s[HTTP]["met"]
    text = serve_feast.table(s, "head")
    assert "0.500 (target <= 0.5: met)" in text
    assert "0.150 (target <= 0.1: not met)" in text


def test_no_feast_virtualenv_skips_with_the_way_to_make_it(tmp_path: Path) -> None:
    work = serve_feast.Workload([], None, [[]])  # type: ignore[arg-type]
    text = serve_feast.compare(lambda i: None, tmp_path / "none", [], work, 1, 0.1)
    assert "Feast rows skipped" in text and "make bench-feast-env" in text
