"""The Feast comparison's bookkeeping (benchmarks/serve_feast.py), without Feast: the order
the paths take turns in, and the summary's percentiles, ratios and verdicts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import serve_feast
from serve_feast import FRONT, HTTP, PERSONA, SDK


class FakePeer:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def time(self, path: str, seconds: float) -> list[float]:
        self.log.append(path)
        return [0.010 if path == SDK else 0.040]


def test_paths_take_turns_and_the_first_turns_each_round(monkeypatch: Any) -> None:
    log: list[str] = []

    def timed(call: Any, seconds: float) -> list[float]:
        return [call(0)]

    def path(name: str, took: float) -> Any:
        return lambda i: log.append(name) or took

    monkeypatch.setattr(serve_feast, "timed", timed)
    gets = {PERSONA: path(PERSONA, 0.002), FRONT: path(FRONT, 0.001)}
    out = serve_feast.rounds_of(gets, FakePeer(log), 4, 0.1)  # type: ignore[arg-type]
    assert log == [PERSONA, FRONT, SDK, HTTP, FRONT, SDK, HTTP, PERSONA,
                   SDK, HTTP, PERSONA, FRONT, HTTP, PERSONA, FRONT, SDK]  # fmt: skip
    assert out == {PERSONA: [[0.002]] * 4, FRONT: [[0.001]] * 4, SDK: [[0.010]] * 4,
                   HTTP: [[0.040]] * 4}  # fmt: skip


def test_summary_pools_rounds_and_judges_the_p50_ratios() -> None:
    samples = {
        PERSONA: [[0.002, 0.002], [0.004, 0.004]],  # pooled p50 3 ms, rounds 2 and 4
        SDK: [[0.006], [0.006]],  # 3/6 = 0.5: met (at most 0.5)
        HTTP: [[0.020], [0.020]],  # 3/20 = 0.15: not met (at most 0.1)
        FRONT: [[0.001], [0.001]],  # 1/6, 1/20 = 0.05: both met
    }
    s = serve_feast.summary(samples)
    assert s[PERSONA]["p50"] == pytest.approx(3.0)
    assert s[PERSONA]["rounds"] == pytest.approx([2.0, 4.0])
    assert s[PERSONA]["calls"] == 4
    assert "ratios" not in s[PERSONA] and "ratios" not in s[FRONT]
    assert s[SDK]["ratios"] == pytest.approx({PERSONA: 0.5, FRONT: 1 / 6})
    assert s[HTTP]["ratios"] == pytest.approx({PERSONA: 0.15, FRONT: 0.05})
    text = serve_feast.table(s, "head")
    assert "0.500 (target <= 0.5: met); Go front 0.167 (target <= 0.5: met)" in text
    assert "0.150 (target <= 0.1: not met); Go front 0.050 (target <= 0.1: met)" in text


def test_no_feast_virtualenv_skips_with_the_way_to_make_it(tmp_path: Path) -> None:
    work = serve_feast.Workload([], None, [[]])  # type: ignore[arg-type]
    text = serve_feast.compare({PERSONA: lambda i: None}, tmp_path / "none", [], work, 1, 0.1)
    assert "Feast rows skipped" in text and "make bench-feast-env" in text
