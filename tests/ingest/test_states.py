"""`StateKeeper` (services/ingest/states.py), pure logic with stand-in heads: which versions
get short-term rows, and that no failure of its own (store, registry, tokenizer) reaches the
ingest loop: the batch goes on without state, and serving reads those users' windows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract.codec import Decoded
from contract.events import Event
from services.ingest.states import StateKeeper


class _Head:
    def __init__(self, h: int, value: float, fail: bool = False) -> None:
        self.row_dim, self.value, self.fail = h, value, fail

    def event_rows(self, events: Sequence[Event]) -> np.ndarray:
        if self.fail:
            raise ValueError("tokenizer bug")
        return np.full((len(events), self.row_dim), self.value, np.float32)


class _Heads:
    def __init__(self, heads: dict[str, _Head]) -> None:
        self.heads = heads

    def head(self, version: str) -> _Head | None:
        return self.heads.get(version)


EVENTS = [Event("u", f"e{k}", 1000 + k, "view", {}) for k in range(3)]


def test_rows_for_every_written_version_with_a_head() -> None:
    states = {"va": "active", "vb": "backfilling", "vc": "ready", "vr": "retired", "vn": "active"}
    # vn has no head, vr is retired: neither gets rows
    heads = _Heads(
        {"va": _Head(2, 1.0), "vb": _Head(3, 2.0), "vc": _Head(1, 3.0), "vr": _Head(2, 4.0)}
    )
    keeper = StateKeeper(lambda: states, heads, every_s=0.0)
    spec, rows = keeper.rows(EVENTS)
    assert spec is not None and rows is not None
    assert spec.versions == (("va", 2), ("vb", 3), ("vc", 1))
    assert rows.dtype == np.dtype("<f4") and rows.shape == (3, 6)
    np.testing.assert_array_equal(rows[0], [1, 1, 2, 2, 2, 3])
    assert keeper.rows([]) == (None, None)


def test_failures_cost_the_state_not_the_batch() -> None:
    calls = {"n": 0}
    states = {"va": "active"}

    def versions() -> dict[str, str]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("store away")
        return states

    keeper = StateKeeper(versions, _Heads({"va": _Head(2, 1.0)}), every_s=0.0)
    assert keeper.rows(EVENTS)[0] is not None
    spec, _ = keeper.rows(EVENTS)  # the store is away: the versions known before are kept
    assert spec is not None and spec.versions == (("va", 2),)
    broken = StateKeeper(lambda: states, _Heads({"va": _Head(2, 1.0, fail=True)}), every_s=0.0)
    assert broken.rows(EVENTS) == (None, None)
    assert broken.record_rows([Decoded("u", b"e0", 0, b"\xff not a record")]) == (None, None)
    none = StateKeeper(lambda: {}, _Heads({}), every_s=0.0)
    assert none.record_rows([Decoded("u", b"e0", 0, b"")]) == (None, None)


class _AwayStore:
    def read_recent(self, *args: object, **kw: object) -> None:
        raise ConnectionError("store away")

    def write_deltas(self, *args: object) -> int:
        raise AssertionError("nothing read, nothing to write")


def test_a_failing_delta_costs_the_delta_not_the_batch() -> None:
    keeper = StateKeeper(lambda: {"va": "active"}, _Heads({"va": _Head(2, 1.0)}), every_s=0.0,
                         store=_AwayStore())  # fmt: skip
    assert keeper.fold_deltas(["u1", "u2"]) == (0, 1), "logged; serving folds the state instead"
    bare = StateKeeper(lambda: {"va": "active"}, _Heads({"va": _Head(2, 1.0)}), every_s=0.0)
    assert bare.fold_deltas(["u1"]) == (0, 0), "no store: no deltas"
