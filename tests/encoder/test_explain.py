"""What moved a user (`encoder/explain.py`, `persona explain`): a planted lifecycle change
shows as the largest shift, the neighbour split adds up and matches the log, the command
prints and draws, and an unknown user or outcome is a usage error."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from contract.events import Event
from encoder.api import Encoder
from encoder.eventlog import build_log
from encoder.explain import nearest, population, top_moves, trajectory
from encoder.io import write_events_jsonl
from encoder.outcomes import OutcomeSpace
from encoder.release import train_version
from encoder.synthetic import SyntheticDataset
from encoder.train import TrainSpec
from services.cli import main

HOUR, DAY, WEEK = 3_600_000, 86_400_000, 604_800_000


@dataclass(frozen=True)
class World:
    models: Path
    version: str
    events: Path  # the synthetic users, their 14 days of outcomes, and the planted user
    planted: list[Event]  # active for ten days, then quiet: the first quiet event is ...
    change: int  # ... this index of `planted`
    steady: list[Event]  # the same user staying active (no change)


def _user(uid: str, start: int, quiet_days: tuple[float, ...]) -> list[Event]:
    """Three short sessions a day for ten days, then one event at each of `quiet_days`."""
    out: list[Event] = []

    def add(ts: int) -> None:
        props = {"page": "p1", "device": "ios"}
        out.append(Event(uid, f"{uid}-{len(out):04d}", ts, "page_view", props))

    for d in range(10):
        for s in range(3):
            for e in range(3):
                add(start + d * DAY + s * 6 * HOUR + e * 60_000)
    for d in quiet_days:
        add(start + int(d * DAY))
    return out


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, small_data: SyntheticDataset, tiny_spec: TrainSpec
) -> World:
    models = tmp_path_factory.mktemp("models")
    end = small_data.config.end_ms
    # a tiny model learns the quiet days' change in most seeds, not all (default objectives,
    # seeds 0-5: 5 of 6 at one epoch and at four); these tests read explain's account of a
    # model that learned it, so the seed is one that did (seed 0 shifts most at event 31)
    spec = replace(tiny_spec, train=replace(tiny_spec.train, seed=1))
    version, _ = train_version(small_data.events, spec, models, end, parity_n=16)
    start = end - 20 * DAY
    planted = _user("planted", start, (19.0, 19.5, 19.9))  # 9 quiet days before event 90
    steady = _user("steady", start, (10.0, 10.25, 10.5))  # the sessions go on as before
    path = tmp_path_factory.mktemp("explain") / "events.jsonl"
    everything = [*small_data.events, *small_data.future_events, *planted]
    write_events_jsonl(path, sorted(everything, key=Event.sort_key))
    return World(models, version, path, planted, 90, steady)


def test_the_planted_change_is_the_largest_shift(world: World) -> None:
    """The churn-like outcome, (any) event within a horizon, moves most at the first event
    after the quiet days (at the horizon where it moves most: a cell whose calibration
    found no slope is flat); a user who stays active has no shift that size."""
    enc = Encoder.load(world.models, world.version)
    traj = trajectory(enc, "planted", world.planted)
    first = len(world.planted) - len(traj.events)  # the newest max_events are shown
    j = traj.outcome_index("(any)")
    k = traj.moved_most(j)
    at = traj.largest_shift(k, j)
    assert at == world.change - first  # the event that ended the quiet days, not one beside it
    moved = abs(traj.deltas()[:, :, j]).max()  # over every event and horizon
    assert abs(traj.deltas()[at, k, j]) == moved
    steady = trajectory(enc, "steady", world.steady)
    # (with the heads refitted on the training vectors, a steady user's largest step is
    # ~0.73 of the planted one on this tiny model; the trained heads read ~0.5)
    assert abs(steady.deltas()[:, :, j]).max() < moved
    best = top_moves(traj, k, j, n=3)
    assert best[0].index == at and abs(best[0].delta) == pytest.approx(float(moved))
    assert [abs(m.delta) for m in best] == sorted((abs(m.delta) for m in best), reverse=True)
    # the newest state is the vector `Encoder.encode` gives the window at its newest event
    newest = world.planted[-enc.max_events :]
    z = enc.encode([newest], newest[-1].ts_ms)[0]
    np.testing.assert_allclose(traj.vectors[-1], z, atol=1e-5)


def test_the_neighbour_split_adds_up_and_matches_the_log(world: World) -> None:
    enc = Encoder.load(world.models, world.version)
    traj = trajectory(enc, "planted", world.planted)
    at = traj.largest_shift(traj.horizon_index(WEEK), 0)
    t = traj.events[at].ts_ms
    events = _read(world.events)
    log = build_log(events, enc.tokenizer)
    space = OutcomeSpace.from_spec(enc.tokenizer.config.features)
    assert space.names == enc.outcomes.names  # type: ignore[union-attr]
    pop = population(enc, log, space, t, WEEK, "(any)", exclude=["planted"])
    assert "planted" not in pop.ids and pop.observed
    neigh = nearest(traj.vectors[at], pop, at, k=15)
    assert len(neigh.ids) == 15 == neigh.went_on_count + neigh.did_not_count
    assert list(neigh.similarity) == sorted(neigh.similarity, reverse=True)
    assert neigh.base_rate == pytest.approx(float(pop.went_on.mean()))
    # "went on" read straight from the events: any event in (t, t + 1 w)
    for uid, went in zip(neigh.ids, neigh.went_on, strict=True):
        assert bool(went) == any(e.user_id == uid and t < e.ts_ms < t + WEEK for e in events)
    assert 0 < neigh.went_on_count < 15 or 0 < pop.went_on.sum() < len(pop.ids)


def _read(path: Path) -> list[Event]:
    from encoder.io import iter_events

    return list(iter_events(path))


def test_explain_command_prints_and_draws(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "planted.png"
    argv = ["explain", "planted", "--events", str(world.events), "--models", str(world.models)]
    assert main([*argv, "--png", str(png), "--neighbours", "10"]) == 0
    out = capsys.readouterr().out
    traj = trajectory(Encoder.load(world.models, world.version), "planted", world.planted)
    shift = traj.largest_shift(traj.moved_most(0), 0)  # the default state: (any)'s largest
    assert "(any):" in out and re.search(r"10 nearest of \d+ users", out)
    assert f"at event {shift} (" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = ["--outcome", "type=page_view", "--horizon", "1d", "--json", "--neighbours", "5"]
    assert main([*argv, *one]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert list(rep["outcomes"]) == ["type=page_view"] and rep["horizon"] == "1d"
    k, j = traj.horizon_index(DAY), traj.outcome_index("type=page_view")
    nb = rep["neighbours"]
    assert nb["at_index"] == traj.largest_shift(k, j)  # the default state: the largest shift
    assert nb["went_on"] + nb["did_not"] == len(nb["users"]) == 5


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["nobody"], "user 'nobody' has no events"),
        (["planted", "--outcome", "type=teleport"], "no outcome 'type=teleport'"),
        (["planted", "--horizon", "5d"], "no horizon '5d'"),
        (["planted", "--at", "64"], "--at 64: the user has 64 shown events"),
    ],
)
def test_unknown_user_outcome_or_horizon_is_a_usage_error(
    world: World, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    argv = ["explain", *extra, "--events", str(world.events), "--models", str(world.models)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
