"""Helpers: windows written straight into the store, ground-truth checks."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from contract.events import Event
from services.refresh.refresher import Refresher
from services.store.windows import WindowStore
from tests.store_support import UserUpdate, apply_events

T0 = 1_763_000_000_000


def add_events(ws: WindowStore, users: list[str], n_each: int, seed: int, offset0: int = 0) -> None:
    """n_each new events per user (partition 0, offsets from offset0)."""
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
    apply_events(ws, ups)


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
