"""The synthetic generator: deterministic, well-formed, and its planted truth is consistent."""

from __future__ import annotations

from encoder.synthetic import SyntheticConfig, generate

SMALL = SyntheticConfig(users=120, events_per_user=40.0, seed=3)


def test_deterministic_and_seed_sensitive() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert a.events == b.events and a.truth == b.truth
    c = generate(SyntheticConfig(users=120, events_per_user=40.0, seed=4))
    assert [e.ts_ms for e in c.events] != [e.ts_ms for e in a.events]


def test_shape_of_events() -> None:
    ds = generate(SMALL)
    end = SMALL.end_ms
    assert ds.events == sorted(ds.events, key=lambda e: (e.ts_ms, e.event_id))
    assert all(e.ts_ms <= end for e in ds.events)
    assert all(end < e.ts_ms <= end + 14 * 86_400_000 for e in ds.future_events)
    ids = [e.event_id for e in ds.events + ds.future_events]
    assert len(ids) == len(set(ids))
    assert set(ds.truth) == {e.user_id for e in ds.events}
    assert all(u.startswith("u") and len(u) == 7 for u in ds.truth)
    for e in ds.events[:500]:
        for k, v in e.props.items():
            if k in ("price", "dwell_s"):
                assert isinstance(v, float)
            else:
                assert isinstance(v, str)
    mean = len(ds.events) / SMALL.users
    assert 0.6 * SMALL.events_per_user < mean < 1.6 * SMALL.events_per_user


def test_outcomes_match_future_events() -> None:
    ds = generate(SMALL)
    end = SMALL.end_ms
    active = {e.user_id for e in ds.future_events}
    buyers = {
        e.user_id
        for e in ds.future_events
        if e.type == "purchase" and e.ts_ms <= end + 7 * 86_400_000
    }
    for uid, t in ds.truth.items():
        assert t.churns == (uid not in active)
        if t.converts:
            assert uid in buyers
        assert t.lifecycle in ("new", "engaged", "fading", "churned")
        # the hidden state behind the lifecycle: a quiet spell that recovers reads "fading"
        assert t.lifecycle == {"slowing": "fading"}.get(t.state, t.state)
        assert t.activity > 0
    # churned users churn far more often than engaged ones (truth drawn from the hidden state)
    by = {
        lc: [t.churns for t in ds.truth.values() if t.lifecycle == lc]
        for lc in ("engaged", "churned")
    }
    assert sum(by["churned"]) / max(1, len(by["churned"])) > 0.8
    assert sum(by["engaged"]) / max(1, len(by["engaged"])) < 0.2
    # a quiet spell that ends in churn churns more often than one that recovers
    quiet = {
        s: [t.churns for t in ds.truth.values() if t.state == s] for s in ("fading", "slowing")
    }
    assert all(quiet.values())
    assert sum(quiet["fading"]) / len(quiet["fading"]) > sum(quiet["slowing"]) / len(
        quiet["slowing"]
    )


def test_segments_have_distinct_tastes() -> None:
    ds = generate(SyntheticConfig(users=200, events_per_user=60.0, seed=5))
    seg_items: dict[int, set[str]] = {}
    for e in ds.events:
        if "item" in e.props:
            seg_items.setdefault(ds.truth[e.user_id].segment, set()).add(str(e.props["item"]))
    segs = sorted(seg_items)
    a, b = seg_items[segs[0]], seg_items[segs[1]]
    assert len(a & b) < 0.5 * min(len(a), len(b))


def test_intent_switch_changes_only_the_switchers_after_their_switch() -> None:
    from encoder.synthetic import SyntheticConfig, generate

    plain = generate(SyntheticConfig(users=60, seed=3))
    switched = generate(SyntheticConfig(users=60, seed=3, switch_share=0.5))
    movers = {u for u, t in switched.truth.items() if t.switched_at_ms is not None}
    assert 10 <= len(movers) <= 50
    a, b = plain.windows(), switched.windows()
    assert all(a[u] == b[u] for u in a if u not in movers)  # the rest stay byte-equal
    seen_after = 0
    for u in movers:
        t = switched.truth[u]
        assert t.switched_to is not None and t.switched_to != t.segment
        at = t.switched_at_ms
        assert at is not None
        before = [e for e in b[u] if e.ts_ms < at]
        assert before == [e for e in a[u] if e.ts_ms < at]  # the history is untouched
        seen_after += len(b[u]) > len(before)
    assert seen_after > 0
