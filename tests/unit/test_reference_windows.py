"""The plain-Python window rules (the ground truth the Lua script is held to)."""

from __future__ import annotations

from contract.events import Event
from services.config import WindowConfig
from services.store.reference import ReferenceWindows


def ev(eid: str, ts: int, uid: str = "u") -> Event:
    return Event(uid, eid, ts, "view")


def test_docstring_example_count_trim_and_replay() -> None:
    ref = ReferenceWindows(WindowConfig(max_events=2))
    recs = [(0, 0, ev("e1", 1)), (0, 1, ev("e2", 3)), (0, 2, ev("e3", 2))]
    ref.apply_all(recs)
    assert [e.event_id for e in ref.window("u")] == ["e3", "e2"]
    assert [ref.apply(p, o, e) for p, o, e in recs] == ["replayed"] * 3
    assert [e.event_id for e in ref.window("u")] == ["e3", "e2"]


def test_duplicate_event_id_at_a_new_offset_is_ignored() -> None:
    ref = ReferenceWindows(WindowConfig())
    assert ref.apply(0, 0, ev("e1", 10)) == "applied"
    assert ref.apply(0, 1, Event("u", "e1", 99, "click")) == "duplicate"
    assert ref.window("u") == [ev("e1", 10)]


def test_horizon_counts_from_the_newest_event_and_out_of_order_is_sorted() -> None:
    ref = ReferenceWindows(WindowConfig(horizon_ms=150))
    ref.apply_all([(0, 0, ev("a", 1000)), (0, 1, ev("b", 950)), (0, 2, ev("c", 1080))])
    assert [e.event_id for e in ref.window("u")] == ["b", "a", "c"]
    ref.apply(0, 3, ev("d", 1120))  # cutoff 970: b falls out
    assert [e.event_id for e in ref.window("u")] == ["a", "c", "d"]
    ref.apply(0, 4, ev("old", 10))  # arrives late and is already outside the horizon
    assert [e.event_id for e in ref.window("u")] == ["a", "c", "d"]


def test_equal_timestamps_order_by_event_id() -> None:
    ref = ReferenceWindows(WindowConfig())
    ref.apply_all([(0, 0, ev("b", 5)), (0, 1, ev("a", 5))])
    assert [e.event_id for e in ref.window("u")] == ["a", "b"]
