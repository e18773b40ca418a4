"""The synthetic users' lifecycles in time (`encoder/synthetic.py` samples their events):
hidden states new -> engaged <-> fading/slowing -> churned, their change points, and session
start times drawn as a Gamma-gap renewal process whose rate follows the state.

Example::

    traj = trajectory(rng, start=-3.0, stop=44.0)   # [(-3.0, "new"), (1.2, "engaged"), ...]
    state_at(traj, 10.0)                             # "engaged"
"""

from __future__ import annotations

import numpy as np

# Relative session rate (sessions a day before scaling) and session length by state.
# "fading" ends in churn; "slowing" (reported as lifecycle "fading" too) recovers. Both are
# equally quiet; only the doomed ones show it in how they use the product (see
# `synthetic._user_events`).
RATE = {"new": 1.6, "engaged": 1.0, "fading": 0.18, "slowing": 0.18, "churned": 0.0}
LEN = {"new": 1.0, "engaged": 1.15, "fading": 0.7, "slowing": 0.7, "churned": 0.7}


def trajectory(rng: np.random.Generator, start: float, stop: float) -> list[tuple[float, str]]:
    """Lifecycle (time in days, state) change points from `start` up to `stop`."""
    out: list[tuple[float, str]] = [(start, "new")]
    t = start + rng.uniform(2.0, 6.0)

    def quiet() -> str:  # a quiet spell either ends in churn or recovers, decided on entry
        return "fading" if rng.random() < 0.5 else "slowing"

    state = "engaged" if rng.random() < 0.75 else quiet()
    while t < stop:
        out.append((t, state))
        if state == "engaged":
            t += rng.exponential(40.0)
            state = quiet()
        elif state in ("fading", "slowing"):
            t += rng.exponential(10.0)
            state = "churned" if state == "fading" else "engaged"
        else:
            break
    return out


def state_at(traj: list[tuple[float, str]], t: float) -> str:
    state = traj[0][1]
    for t0, s in traj:
        if t0 > t:
            break
        state = s
    return state


def sessions(
    rng: np.random.Generator,
    traj: list[tuple[float, str]],
    start: float,
    stop: float,
    rate_scale: float,
    shape: float,
) -> list[float]:
    """Session start times (days) in [start, stop): Gamma-gap renewal, restarted per state."""
    out: list[float] = []
    changes = [t0 for t0, _ in traj[1:]] + [stop]
    t = start
    while t < stop:
        nxt = next(c for c in changes if c > t) if t < changes[-1] else stop
        rate = RATE[state_at(traj, t)] * rate_scale
        if rate <= 0.0:
            if nxt >= stop:
                break
            t = nxt
            continue
        gap = rng.gamma(shape, 1.0 / (rate * shape))
        if t + gap >= nxt:  # the state changed first: the new state's rate takes over
            t = nxt
            continue
        t += gap
        out.append(t)
    return out


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))
