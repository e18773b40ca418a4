"""The event log as arrays: streaming input, window order, duplicates, and the same tokens
as the Event path the refresher uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract.events import Event
from encoder.eventlog import build_log, ranges
from encoder.features import discover
from encoder.io import EventFileError, iter_events, write_events_jsonl
from encoder.synthetic import SyntheticConfig, generate
from encoder.tokenizer import Tokenizer, TokenizerConfig
from encoder.train import group_by_user


def test_ranges() -> None:
    got = ranges(np.array([3, 0, 7]), np.array([5, 0, 9]))
    assert got.tolist() == [3, 4, 7, 8]


def test_order_duplicates_and_offsets() -> None:
    evs = [
        Event("u1", "e2", 5, "a", {"p": "x"}),
        Event("u2", "e1", 1, "a", {}),
        Event("u1", "e1", 5, "b", {"p": "y"}),  # same time as e2: event id decides
        Event("u1", "e0", 9, "a", {}),
        Event("u1", "e0", 3, "b", {}),  # a duplicate id: the later one in the stream wins
    ]
    tok = Tokenizer(TokenizerConfig(features=discover(evs)))
    log = build_log(evs, tok, keep_raw=2)
    assert log.users == ["u1", "u2"] and log.offsets.tolist() == [0, 3, 4]
    assert log.ts.tolist() == [3, 5, 5, 1]
    types = {t: i + 2 for i, t in enumerate(tok.config.event_types)}
    assert log.static[:3, 0].tolist() == [types["b"], types["b"], types["a"]]  # e0, e1, e2
    assert [e.event_id for e in log.raw["u1"]] == ["e0", "e1", "e2"]
    assert [e.event_id for e in group_by_user(evs)["u1"]] == ["e0", "e1", "e2"]


def test_windows_match_the_event_path() -> None:
    ds = generate(SyntheticConfig(users=30, events_per_user=40.0, seed=4))
    tok = Tokenizer(TokenizerConfig(features=discover(ds.events), max_events=16))
    log = build_log(reversed(ds.events), tok)  # any input order
    users = np.arange(len(log.users))
    now = ds.config.end_ms - 3 * 86_400_000
    nows = np.full(len(users), now)
    lo, hi = log.window_bounds(users, nows, 16)
    got = log.token_batch(lo, hi, nows, tok)
    by_user = group_by_user(ds.events)
    windows = [[e for e in by_user[u] if e.ts_ms <= now][-16:] for u in log.users]
    want = tok.encode(windows, now)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.age_h, want.age_h)
    # strict: events at exactly `now` are left out; a time horizon trims old events
    at = int(log.ts[log.offsets[0] + 3])
    lo_s, hi_s = log.window_bounds(users[:1], np.array([at]), 100, strict=True)
    assert (log.ts[lo_s[0] : hi_s[0]] < at).all()
    lo_h, hi_h = log.window_bounds(users[:1], np.array([now]), 100, horizon_ms=86_400_000)
    newest = int(log.ts[hi_h[0] - 1])
    assert (log.ts[lo_h[0] : hi_h[0]] >= newest - 86_400_000).all()
    assert lo_h[0] == log.offsets[0] or log.ts[lo_h[0] - 1] < newest - 86_400_000
    # the horizon counts back from the window's newest event, as the store trims: a user
    # idle for longer than the horizon keeps its last day of events, not an empty window
    later = np.array([int(log.ts[log.offsets[1] - 1]) + 90 * 86_400_000])
    lo_i, hi_i = log.window_bounds(users[:1], later, 100, horizon_ms=86_400_000)
    assert hi_i[0] == log.offsets[1] and hi_i[0] > lo_i[0]
    assert log.ts[lo_i[0]] >= log.ts[hi_i[0] - 1] - 86_400_000


def test_streams_jsonl_and_parquet(tmp_path: Path) -> None:
    ds = generate(SyntheticConfig(users=5, events_per_user=10.0, seed=1))
    jl = tmp_path / "e.jsonl"
    write_events_jsonl(jl, ds.events)
    assert list(iter_events(jl)) == ds.events
    rows = [dict(e.to_json_dict(), props=json.dumps(e.to_json_dict()["props"])) for e in ds.events]
    pqf = tmp_path / "e.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pqf, row_group_size=7)
    assert list(iter_events(pqf, batch_rows=4)) == ds.events
    bad = tmp_path / "bad.jsonl"
    bad.write_text(jl.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(EventFileError, match="line 2"):
        list(iter_events(bad))


def test_tokenised_in_batches_as_event_by_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events are tokenised a batch at a time (`TOKENIZE_EVERY`, within `CHUNK`): every
    row holds its event's `static_ids`, whatever the batch and chunk sizes."""
    import encoder.eventlog as eventlog

    ds = generate(SyntheticConfig(users=20, events_per_user=30.0, seed=5))
    tok = Tokenizer(TokenizerConfig(features=discover(ds.events)))
    monkeypatch.setattr(eventlog, "TOKENIZE_EVERY", 7)
    monkeypatch.setattr(eventlog, "CHUNK", 50)
    log = build_log(ds.events, tok)
    by_user = group_by_user(ds.events)
    want = [tok.static_ids(e) for u in log.users for e in by_user[u]]
    assert len(want) > 100 and log.static.tolist() == want


def test_windows_with_a_horizon_are_what_the_store_holds() -> None:
    """`window_bounds` with a horizon (what `persona eval` and training use) keeps the events
    the store's windows keep at the same time: the newest `max_events`, none older than the
    horizon before the user's newest event (services/store/memory.py: apply.lua's rules),
    for active and long-idle users alike."""
    from services.config import WindowConfig
    from services.store.memory import MemoryWindows
    from tests.store_support import UserUpdate, apply_events

    ds = generate(SyntheticConfig(users=40, events_per_user=60.0, seed=6))
    split = ds.config.end_ms - 20 * 86_400_000  # many users idle for weeks by then
    horizon, max_events = 7 * 86_400_000, 32
    before = [e for e in ds.events if e.ts_ms < split]
    tok = Tokenizer(TokenizerConfig(features=discover(ds.events), max_events=max_events))
    log = build_log(before, tok)
    users = np.arange(len(log.users))
    lo, hi = log.window_bounds(
        users, np.full(len(users), split), max_events, strict=True, horizon_ms=horizon
    )
    store = MemoryWindows(WindowConfig(max_events=max_events, horizon_ms=horizon))
    by_user = group_by_user(before)
    apply_events(store, [UserUpdate(u, 0, list(enumerate(by_user[u]))) for u in log.users])
    held = {w.user_id: w.events for w in store.read(log.users)}
    idle = 0
    for b, uid in enumerate(log.users):
        assert log.ts[lo[b] : hi[b]].tolist() == [e.ts_ms for e in held[uid]], uid
        idle += int(split - held[uid][-1].ts_ms > horizon)
    assert idle > 0  # some windows would have been empty had the horizon counted from T
