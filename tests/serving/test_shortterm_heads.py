"""`RegistryHeads`: a version's head loaded once and kept; a version without one is final;
one missing from this replica's registry, or whose head fails to load (a parity failure),
is served nearline and tried again after `retry_s`. Pure logic: `ShortTermHead.load` is
counted, not run (tests/refresh/test_refresh_shortterm.py loads real trained heads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from encoder import shortterm
from services.serving.shortterm import RegistryHeads


class _Head:
    out_dim, max_events = 4, 8


class _Loads:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.result: dict[str, object] = {}

    def __call__(self, models_dir: Path, version: str) -> object:
        self.calls.append(version)
        got = self.result.get(version)
        if isinstance(got, Exception):
            raise got
        return got


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> _Loads:
    fake = _Loads()
    monkeypatch.setattr(shortterm.ShortTermHead, "load", fake)
    return fake


def test_kept_final_and_retried(tmp_path: Path, loads: _Loads) -> None:
    for v in ("with", "without", "broken"):
        (tmp_path / v).mkdir()
    head = _Head()
    loads.result = {"with": head, "broken": shortterm.ShortTermParityError("parity failed")}
    heads = RegistryHeads(tmp_path, retry_s=0.0)
    assert heads.head("with") is head and heads.head("with") is head
    assert heads.head("without") is None and heads.head("without") is None
    assert loads.calls == ["with", "without"], "a head, or none, is final: loaded once"
    assert heads.head("broken") is None and heads.head("broken") is None
    assert loads.calls[2:] == ["broken", "broken"], "a failed load is tried again"
    assert heads.head("missing") is None and loads.calls[4:] == []  # not in the registry
    (tmp_path / "missing").mkdir()  # the version's files arrive
    loads.result["missing"] = head
    assert heads.head("missing") is head and loads.calls[4:] == ["missing"]

    slow = RegistryHeads(tmp_path, retry_s=3600.0)
    assert slow.head("broken") is None and slow.head("broken") is None
    assert loads.calls[5:] == ["broken"], "not again before retry_s"
