"""Helpers: windows written straight into the store, ground-truth checks."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from contract.events import Event
from services.ingest.states import StateKeeper
from services.refresh.refresher import Refresher
from services.store.windows import WindowStore
from tests.store_support import UserUpdate, apply_events, packed

T0 = 1_763_000_000_000


def add_events(
    ws: WindowStore, users: list[str], n_each: int, seed: int, offset0: int = 0,
    states: StateKeeper | None = None,
) -> None:  # fmt: skip
    """n_each new events per user (partition 0, offsets from offset0); with `states`, the
    short-term state of its versions is kept, as `persona ingest --models` does."""
    rng = random.Random(seed)
    ups = []
    for k, uid in enumerate(users):
        evs = []
        for j in range(n_each):
            off = offset0 + k * n_each + j
            ts = T0 + off * 1000
            props: dict[str, str | float] = {
                "item": f"i{rng.randrange(300)}",
                "price": rng.uniform(1, 50),
            }
            evs.append((off, Event(uid, f"{uid}-e{off}", ts, rng.choice(["view", "click"]), props)))
        ups.append(UserUpdate(uid, 0, evs))
    if states is None:
        apply_events(ws, ups)
        return
    spec, rows = states.rows([ev for u in ups for _, ev in u.events])
    assert spec is not None and rows is not None, "no written version with a head"
    per = np.split(rows, np.cumsum([len(u.events) for u in ups])[:-1])
    ws.apply_packed([replace(p, rows=r.tobytes()) for p, r in zip(packed(ups), per, strict=True)],
                    states=spec)  # fmt: skip


@contextmanager
def running(r: Refresher) -> Iterator[Refresher]:
    """`r.run` on a thread for the body of the `with`; stopped and joined after, also when
    the body fails."""
    stop = threading.Event()
    loop = threading.Thread(target=r.run, args=(stop,))
    loop.start()
    try:
        yield r
    finally:
        stop.set()
        loop.join(30)
