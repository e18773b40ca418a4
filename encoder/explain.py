"""What moved a user: the outcome probabilities of one user event by event, the events that
moved them most, and the users nearest to one past state, split by what they did next.

Order of work (what `persona explain` calls):

1. `trajectory`: the user's history in window order; for each of the newest `shown` events,
   the vector of the window that ends at that event, encoded at the event's own time (the
   newest `max_events` events up to it: what the refresher would have written right after
   it), and the version's calibrated P(outcome within horizon) of every vector;
2. `Trajectory.deltas` / `top_moves`: the change each event made to each probability (the
   first shown event has no earlier state: 0) and, per (horizon, outcome), the events with
   the largest |change|, signed;
3. `population`: every other user of the log at a chosen past state's time ``T`` (default:
   the largest shift), their vector at ``T`` and whether the outcome then happened in
   ``(T, T + horizon)`` in the log (observational: what they did, not what a change caused;
   ``observed`` is false where the log ends before ``T + horizon``);
4. `nearest`: the k users whose vectors at ``T`` are closest (cosine) to the user's state,
   split into those who went on to the outcome and those who did not, with the counts and
   the population's base rate beside them.

Why each prefix is encoded on its own instead of read from `UserEncoder.prefix_vectors`
(training's one-pass prefix vectors): in that pass every hidden state reads the events' ages
at one ``now``, so an early prefix would mix two times. Encoding each prefix at its event's
time costs T windows of at most `max_events` events (64 x 64 tokens) and is the state the
service held then; the newest prefix is `Encoder.encode` of the window at its newest event.

Shapes: T shown events, E vector dimensions, K horizons, Y outcomes, U population users.

Example: a user with four events ``view @ d0, view @ d0 + 1 h, view @ d0 + 2 h, view @ d9``:
the fourth event comes after nine quiet days, so its vector reads few recent events and
``(any)`` within 1 d drops there: ``top_moves`` lists index 3 first with a negative delta.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.events import Event
from encoder.api import Encoder
from encoder.evaluate_outcomes import horizon_labels
from encoder.eventlog import EventLog
from encoder.outcomes import OutcomeSpace


def user_history(events: Iterable[Event]) -> list[Event]:
    """One user's events in window order ``(ts_ms, event_id)``, a repeated event id kept
    once (the last one seen, as `build_log` does)."""
    by_id = {e.event_id: e for e in events}
    return sorted(by_id.values(), key=Event.sort_key)


def describe(e: Event, props: int = 2) -> str:
    """``type k=v k=v``: the event's type and its first `props` properties (sorted)."""
    parts = [f"{k}={e.props[k]}" for k in sorted(e.props)[:props]]
    return " ".join([e.type, *parts])


@dataclass(frozen=True)
class Trajectory:
    """One user's states over the shown events.

    Attributes:
        user_id: the user.
        events: (T,) the shown events, oldest first.
        gaps_ms: (T,) int64, the time since the user's previous event (-1: none).
        vectors: (T, E) float32, the vector after each event, encoded at its time.
        probs: (T, K, Y) float32 calibrated probabilities of each vector.
        names: (Y,) outcome names; horizons_ms: (K,) horizons.
    """

    user_id: str
    events: tuple[Event, ...]
    gaps_ms: np.ndarray
    vectors: np.ndarray
    probs: np.ndarray
    names: tuple[str, ...]
    horizons_ms: tuple[int, ...]

    def deltas(self) -> np.ndarray:
        """(T, K, Y) the change each event made: ``probs[t] - probs[t - 1]``, 0 at t = 0."""
        d = np.zeros_like(self.probs)
        d[1:] = self.probs[1:] - self.probs[:-1]
        return d

    def horizon_index(self, horizon_ms: int) -> int:
        if horizon_ms not in self.horizons_ms:
            raise KeyError(f"no horizon {horizon_ms} ms (the version has {self.horizons_ms})")
        return self.horizons_ms.index(horizon_ms)

    def outcome_index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"no outcome {name!r} in this version")
        return self.names.index(name)

    def largest_shift(self, k: int, j: int) -> int:
        """The shown event whose |delta| of cell (k, j) is largest (the first on ties)."""
        return int(np.argmax(np.abs(self.deltas()[:, k, j])))

    def moved_most(self, j: int) -> int:
        """The horizon (index) at which outcome j's largest single change is largest."""
        return int(np.argmax(np.abs(self.deltas()[:, :, j]).max(0)))


def trajectory(
    enc: Encoder, user_id: str, history: Sequence[Event], shown: int | None = None
) -> Trajectory:
    """Step 1: the vector and probabilities after each of the newest `shown` events.

    Args:
        enc: a loaded version with outcome heads.
        user_id: whose history it is (carried into the result).
        history: the user's events in window order (`user_history`), at least one.
        shown: how many of the newest events to explain (default: the model's `max_events`).

    Raises:
        ValueError: a version without outcome heads, or an empty history.
    """
    if enc.outcomes is None:
        raise ValueError(f"model {enc.version} has no outcome heads (outcomes.json)")
    if not history:
        raise ValueError(f"user {user_id} has no events")
    n = len(history)
    m = min(n, shown or enc.max_events)
    idx = range(n - m, n)
    windows = [history[max(0, i + 1 - enc.max_events) : i + 1] for i in idx]
    nows = [history[i].ts_ms for i in idx]
    z = enc.encode(windows, nows)  # (T, E)
    ts = np.asarray([-1, *(e.ts_ms for e in history)], dtype=np.int64)  # (n + 1,)
    gaps = np.where(np.arange(n) == 0, -1, np.diff(ts))[n - m :]  # (T,)
    heads = enc.outcomes
    return Trajectory(
        user_id,
        tuple(history[n - m :]),
        gaps,
        z,
        heads.probabilities(z),  # (T, K, Y)
        heads.names,
        heads.horizons_ms,
    )


@dataclass(frozen=True)
class Move:
    """One event's change of one probability: its index in the shown events, its time,
    the time since the previous event (-1: none), what it was, the change and the
    probability after it."""

    index: int
    ts_ms: int
    gap_ms: int
    event: str
    delta: float
    after: float


def top_moves(traj: Trajectory, k: int, j: int, n: int = 5) -> list[Move]:
    """Step 2: the `n` events that moved cell (horizon k, outcome j) most, largest |delta|
    first (ties: the earlier event first); events that moved nothing are left out."""
    d = traj.deltas()[:, k, j]  # (T,)
    order = np.lexsort((np.arange(len(d)), -np.abs(d)))[:n]
    return [
        Move(
            int(t),
            traj.events[t].ts_ms,
            int(traj.gaps_ms[t]),
            describe(traj.events[t]),
            float(d[t]),
            float(traj.probs[t, k, j]),
        )
        for t in order
        if d[t] != 0.0
    ]


@dataclass(frozen=True)
class Population:
    """Other users at time ``at_ms``: ids (U,), vectors (U, E), went_on (U,) bool (the
    outcome happened in ``(at_ms, at_ms + horizon_ms)``), observed (the log reaches
    ``at_ms + horizon_ms``: else a "did not" may only be unseen)."""

    ids: tuple[str, ...]
    vectors: np.ndarray
    went_on: np.ndarray
    at_ms: int
    horizon_ms: int
    outcome: str
    observed: bool


def population(
    enc: Encoder,
    log: EventLog,
    space: OutcomeSpace,
    at_ms: int,
    horizon_ms: int,
    outcome: str,
    exclude: Sequence[str] = (),
) -> Population:
    """Step 3: every log user with an event at or before `at_ms` (but those in `exclude`),
    their vector at `at_ms` and whether `outcome` followed within `horizon_ms`.

    Args:
        enc: the version (its tokenizer built `log`).
        log: the event log (`build_log` with ``enc.tokenizer``).
        space: the version's outcome space (names equal to its heads').
        at_ms: the state's time; horizon_ms: how far "went on" looks.
        outcome: the outcome's name.
        exclude: user ids left out (the explained user).
    """
    j = space.names.index(outcome)
    first = log.ts[log.offsets[:-1]] if log.n_events else np.zeros(0, np.int64)  # (U,)
    skip = set(exclude)
    users = np.asarray(
        [u for u in np.flatnonzero(first <= at_ms) if log.users[u] not in skip], dtype=np.int64
    )
    nows = np.full(len(users), at_ms, dtype=np.int64)
    lo, hi = log.window_bounds(users, nows, enc.max_events)  # events at or before at_ms
    z = enc.encode_rows(log, lo, hi, nows) if len(users) else np.zeros((0, enc.dim), np.float32)
    until = np.asarray([at_ms + horizon_ms], dtype=np.int64)
    y = horizon_labels(log, space, users, hi, until)[:, 0, j]  # (U,)
    ids = tuple(log.users[u] for u in users)
    return Population(ids, z, y, at_ms, horizon_ms, outcome, at_ms + horizon_ms <= log.end_ms)


@dataclass(frozen=True)
class Neighbours:
    """Step 4's answer: the k nearest users (ids, cosine similarity, went_on), nearest
    first, and the share of the whole population that went on (the base rate)."""

    at_index: int
    ids: tuple[str, ...]
    similarity: np.ndarray
    went_on: np.ndarray
    base_rate: float
    population: int
    observed: bool

    @property
    def went_on_count(self) -> int:
        return int(self.went_on.sum())

    @property
    def did_not_count(self) -> int:
        return len(self.ids) - self.went_on_count


def nearest(state: np.ndarray, pop: Population, at_index: int, k: int = 20) -> Neighbours:
    """Step 4: the `k` users of `pop` nearest to `state` (E,) by cosine similarity.

    Args:
        state: (E,) the explained user's vector at the chosen event.
        pop: the other users at that event's time (`population`).
        at_index: the chosen event's index among the shown events (carried along).
        k: how many neighbours.
    """

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    sim = unit(pop.vectors.astype(np.float64)) @ unit(state.astype(np.float64))  # (U,)
    order = np.lexsort((np.arange(len(sim)), -sim))[:k]
    ids = tuple(pop.ids[i] for i in order)
    rate = float(pop.went_on.mean()) if len(pop.ids) else float("nan")
    return Neighbours(
        at_index, ids, sim[order], pop.went_on[order], rate, len(pop.ids), pop.observed
    )


def human_ms(ms: int) -> str:
    """3600000 -> ``1h``, 86400000 -> ``1d``, 604800000 -> ``1w``."""
    for unit, size in (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _short(ms: int) -> str:
    """A duration in its largest unit, one decimal: ``40s``, ``3.5m``, ``11.2d``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms >= size:
            return f"{ms / size:.1f}{unit}"
    return f"{ms / 1000:.0f}s"


def report(
    traj: Trajectory,
    k: int,
    cells: Sequence[int],
    moves: dict[int, list[Move]],
    neigh: Neighbours | None,
    outcome: str,
) -> dict[str, Any]:
    """Everything above as plain JSON values: per outcome j in `cells` (horizon k) the
    trajectory and its top moves, and the neighbour split for `outcome`."""
    out: dict[str, Any] = {
        "user_id": traj.user_id,
        "horizon": human_ms(traj.horizons_ms[k]),
        "events": [{"ts_ms": e.ts_ms, "event": describe(e)} for e in traj.events],
        "outcomes": {
            traj.names[j]: {
                "probabilities": [round(float(p), 5) for p in traj.probs[:, k, j]],
                "top_moves": [m.__dict__ for m in moves[j]],
            }
            for j in cells
        },
    }
    if neigh is not None:
        out["neighbours"] = {
            "outcome": outcome,
            "at_index": neigh.at_index,
            "at_ms": traj.events[neigh.at_index].ts_ms,
            "population": neigh.population,
            "base_rate": round(neigh.base_rate, 4),
            "observed": neigh.observed,
            "went_on": neigh.went_on_count,
            "did_not": neigh.did_not_count,
            "users": [
                {"user_id": u, "similarity": round(float(s), 4), "went_on": bool(w)}
                for u, s, w in zip(neigh.ids, neigh.similarity, neigh.went_on, strict=True)
            ],
        }
    return out


def format_report(rep: dict[str, Any]) -> str:
    """The readable table of a `report`: per outcome its path and top moving events, then
    the neighbour split."""
    n = len(rep["events"])
    lines = [f"user {rep['user_id']}: {n} events, P(outcome within {rep['horizon']})"]
    for name, o in rep["outcomes"].items():
        p = o["probabilities"]
        lo, hi = int(np.argmin(p)), int(np.argmax(p))
        lines.append("")
        lines.append(
            f"{name}: {p[0]:.3f} at event 0 -> {p[-1]:.3f} at event {n - 1} "
            f"(min {p[lo]:.3f} at {lo}, max {p[hi]:.3f} at {hi})"
        )
        lines.append(f"  {'event':>5s} {'delta':>7s} {'after':>6s} {'gap':>6s}  what")
        for m in o["top_moves"]:
            when = np.datetime64(m["ts_ms"], "ms").astype("datetime64[s]")
            gap = "-" if m["gap_ms"] < 0 else _short(m["gap_ms"])
            lines.append(
                f"  {m['index']:5d} {m['delta']:+7.3f} {m['after']:6.3f} {gap:>6s}  "
                f"{when} {m['event']}"
            )
    nb = rep.get("neighbours")
    if nb is not None:
        k = nb["went_on"] + nb["did_not"]
        lines.append("")
        lines.append(
            f"{k} nearest of {nb['population']} users at event {nb['at_index']} "
            f"({rep['events'][nb['at_index']]['event']}): {nb['went_on']} went on to "
            f"{nb['outcome']} within {rep['horizon']}, {nb['did_not']} did not "
            f"(all users: {nb['base_rate']:.1%})"
        )
        if not nb["observed"]:
            lines.append("  (the log ends inside the horizon: some 'did not' may be unseen)")
        for flag, head in ((True, "went on"), (False, "did not")):
            users = [f"{u['user_id']} ({u['similarity']:.2f})" for u in nb["users"]]
            picked = [s for s, u in zip(users, nb["users"], strict=True) if u["went_on"] is flag]
            lines.append(f"  {head:>8s}: {', '.join(picked) or '-'}")
    return "\n".join(lines)


def write_trajectory_png(rep: dict[str, Any], path: Path, title: str) -> None:
    """Each outcome's probability over the shown events (lines), its top moving events
    marked, and the neighbours' state as a dotted vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, o in rep["outcomes"].items():
        p = np.asarray(o["probabilities"], dtype=np.float64)
        (line,) = ax.plot(np.arange(len(p)), p, lw=1.5, label=name)
        at = [m["index"] for m in o["top_moves"]]
        ax.scatter(at, p[at], color=line.get_color(), edgecolor="black", zorder=3, s=36)
    nb = rep.get("neighbours")
    if nb is not None:
        ax.axvline(nb["at_index"], color="grey", ls=":", lw=1, label="neighbours' state")
    ax.set_xlabel("event (oldest shown = 0); dots: the events that moved it most")
    ax.set_ylabel(f"P(outcome within {rep['horizon']})")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
