"""`persona train --choose` (`encoder/choose.py`): candidates measured on an earlier cut of
the training events, nothing at or after the held-out split read, the defaults kept unless
beaten by more than the margin; the flags it refuses."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

import encoder.choose as choose_mod
from contract.events import Event
from encoder.choose import Candidate, ChooseConfig, candidates, choose
from encoder.datasets import synthetic_log
from encoder.evaluate_log import default_split
from encoder.synthetic import SyntheticConfig
from encoder.train import TrainSpec
from services.cli import build_parser
from services.cli.train_options import choose_refused

TINY = replace(
    TrainSpec(),
    model=replace(TrainSpec().model, d_model=32, n_layers=1, n_heads=2, d_ff=64),
    train=replace(
        TrainSpec().train,
        epochs=1,
        train_max_events=16,
        cuts_per_user=1,
        min_examples=0,
        short_term=False,
        calibrate_crossfit=0,
    ),
)


def events(users: int = 120) -> tuple[list[Event], int]:
    return synthetic_log(SyntheticConfig(users=users, seed=9))


def test_candidates_change_one_thing_each_from_the_spec() -> None:
    got = candidates(TINY, ChooseConfig(count_top=8, count_hidden=32, window=96))
    assert got[0].spec == TINY and got[0].name == "defaults"
    counts, longer = got[1].spec, got[2].spec
    assert (counts.model.count_top, counts.model.count_hidden) == (8, 32)
    assert replace(counts, model=TINY.model) == TINY
    assert longer.tokenizer.max_events == longer.model.max_events == 96
    assert longer.train.train_max_events == 96 and longer.model.count_top == 0


def scripted(
    monkeypatch: pytest.MonkeyPatch, scores: dict[str, dict[str, Any] | str]
) -> list[tuple[int, int, int]]:
    """`_measure` replaced: each candidate's canned mean AUCs (a str: it raises that). Returns
    what each call saw: (cut, outcomes until, newest event ts its source gave)."""
    seen: list[tuple[int, int, int]] = []

    def measure(c: Candidate, before: Any, cut: int, cfg: Any) -> dict[str, Any]:
        seen.append((cut, cut + cfg.horizon_ms, max(e.ts_ms for e in before())))
        got = scores[c.name]
        if isinstance(got, str):
            raise ValueError(got)
        return got

    monkeypatch.setattr(choose_mod, "_measure", measure)
    return seen


def test_the_defaults_stay_unless_beaten_by_more_than_the_margin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    evs, split = events(40)
    opts = [Candidate(n, TINY) for n in ("defaults", "a", "b")]
    cfg = ChooseConfig(margin=0.003)
    scripted(monkeypatch, {"defaults": {"both": 0.800}, "a": {"both": 0.802}, "b": "too few"})
    chosen, report = choose(evs, opts, split, cfg)
    assert chosen.name == "defaults" and report["candidates"]["b"] == {"skipped": "too few"}
    scripted(monkeypatch, {"defaults": {"both": 0.800}, "a": {"both": 0.804}, "b": {"both": 0.81}})
    assert choose(evs, opts, split, cfg)[0].name == "b"  # the best of those above the margin
    scripted(monkeypatch, {"defaults": "no outcome", "a": {"both": 0.7}, "b": {"both": 0.6}})
    assert choose(evs, opts, split, cfg)[0].name == "a"  # the defaults could not be measured


def test_the_cut_reads_nothing_at_or_after_the_held_out_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    evs, split = events(40)
    assert max(e.ts_ms for e in evs) >= split  # the log has a future past the split
    seen = scripted(monkeypatch, {"defaults": {"both": 0.8}})
    _, report = choose(evs, [Candidate("defaults", TINY)], split)
    first = min(e.ts_ms for e in evs)
    want_cut = default_split(first, split - 1)
    assert seen == [(want_cut, split, max(e.ts_ms for e in evs if e.ts_ms < split))]
    assert report["cut_at_ms"] == want_cut < split and report["outcomes_until_ms"] == split


@pytest.mark.slow
def test_choose_trains_and_evaluates_every_candidate_on_the_cut() -> None:
    evs, split = events()
    chosen, report = choose(evs, candidates(TINY), split)
    scores = report["candidates"]
    assert len(scores) == 3 and all(
        {"embedding", "aggregates", "both"} <= set(s) for s in scores.values()
    )
    # the same windows and outcomes for every candidate: the aggregates' probe is shared
    assert len({s["aggregates"] for s in scores.values()}) == 1
    best = max(scores, key=lambda n: scores[n]["both"])
    margin = ChooseConfig().margin
    want = best if scores[best]["both"] > scores["defaults"]["both"] + margin else "defaults"
    assert chosen.name == report["chosen"] == want


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--synthetic", "--choose"], "needs --events"),
        (["--events", "e.jsonl", "--choose", "--count-top", "16"], "drop --count-top"),
        (["--events", "e.jsonl", "--choose", "--max-events", "128"], "drop --max-events"),
        (["--events", "e.jsonl", "--choose", "--nproc", "2"], "drop --nproc"),
    ],
)
def test_choose_refuses_flags_that_pin_what_it_measures(argv: list[str], why: str) -> None:
    args = build_parser().parse_args(["train", *argv])
    assert why in (choose_refused(args) or "")
    with pytest.raises(SystemExit, match=why):
        args.func(args)


def test_choose_with_plain_events_is_allowed() -> None:
    args = build_parser().parse_args(["train", "--events", "e.jsonl", "--choose"])
    assert choose_refused(args) is None
    assert choose_refused(build_parser().parse_args(["train", "--synthetic"])) is None
