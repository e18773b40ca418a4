"""`persona forget` on the embedded stack (Tansu, Valkey): the store forgets the user, every
replica's index drops it, an `ingest --rebuild` of the old events does not bring it back,
and an event after the request does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from contract.events import Event
from services.cli import main
from services.common.kafka import producer
from services.config import KafkaConfig, WindowConfig
from services.index import IndexConfig, LookalikeIndex
from services.index.follower import IndexFollower
from services.ingest.produce import produce_events
from services.refresh.publish import Publisher
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.records import StoredVector
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.integration.ingest_support import ingest_until_idle, kcfg_for, sample

pytestmark = pytest.mark.integration
DIM = 8


def _follower(bootstrap: str, topic: str, version: str) -> IndexFollower:
    index = LookalikeIndex(IndexConfig(dim=DIM, exact_below=1000, gpu="off"))
    return IndexFollower(bootstrap, topic, index, version)


def _in_index(f: IndexFollower, users: list[str]) -> list[str]:
    assert f.catch_up(30)
    return [u for u in users if f.index.vector_of(u) is not None]


def test_forget_reaches_store_index_and_survives_a_rebuild(
    stack: EmbeddedStack, make_topic: Callable[..., str], report: Callable[..., None]
) -> None:
    a = stack.addresses
    events_topic = make_topic(a.bootstrap, 2, "fev")
    emb_topic = make_topic(a.bootstrap, 2, "femb", {"cleanup.policy": "compact"})
    pre = f"fe{uuid.uuid4().hex[:10]}"
    gone, stays, ver = f"{pre}-gone", f"{pre}-stays", f"vfe-{pre}"
    users = [gone, stays]
    old = time.time_ns() // 1_000_000 - 3_600_000
    evs = [Event(u, f"{u}-e{i}", old + i, "view", {"item": "x"}) for u in users for i in range(5)]
    produce_events(kcfg_for(a.bootstrap, events_topic, "unused"), evs)
    ingest_until_idle(kcfg_for(a.bootstrap, events_topic, f"g1-{pre}"), a.redis)

    client = connect(a.redis)
    windows, vectors = WindowStore(client, WindowConfig()), VectorStore(client)
    pub = Publisher(producer(KafkaConfig(bootstrap=a.bootstrap)), emb_topic)
    first = _follower(a.bootstrap, emb_topic, ver)
    try:
        vectors.set_state(ver, "ready")
        rng = np.random.default_rng(1)
        vs = [
            StoredVector(u, ver, rng.normal(size=DIM).astype(np.float32), old, 5, 1) for u in users
        ]
        vectors.put_batch(vs)
        pub.publish(vs)
        first.start()
        assert _in_index(first, users) == users

        rc = main(["forget", "--bootstrap", a.bootstrap, "--redis", a.redis,
                   "--embeddings-topic", emb_topic, gone])  # fmt: skip

        assert rc == 0
        assert _in_index(first, users) == [stays]  # the running replica drops the user
        second = _follower(a.bootstrap, emb_topic, ver)  # a replica started afterwards
        try:
            assert _in_index(second, users) == [stays]
        finally:
            second.stop()
        w_gone, w_stays = windows.read(users)
        assert w_gone.events == [] and len(w_stays.events) == 5
        assert [len(x) for x in vectors.get_batch(users, ver)] == [0, 1]

        # the topic read again from the start, offsets ignored: the old events stay out
        t0 = time.monotonic()
        run = ingest_until_idle(
            kcfg_for(a.bootstrap, events_topic, f"g2-{pre}"), a.redis, rebuild=True
        )
        replay_s = time.monotonic() - t0
        assert sample(run.registry, "persona_ingest_events_forgotten_total") == 5
        w_gone, w_stays = windows.read(users)
        assert w_gone.events == [] and len(w_stays.events) == 5

        # an event after the request starts a new window
        new = Event(gone, f"{gone}-new", time.time_ns() // 1_000_000 + 1, "view", {"item": "y"})
        produce_events(kcfg_for(a.bootstrap, events_topic, "unused"), [new])
        ingest_until_idle(kcfg_for(a.bootstrap, events_topic, f"g2-{pre}"), a.redis)
        (w_gone,) = windows.read([gone])
        assert [e.event_id for e in w_gone.events] == [new.event_id]
        report(
            scenario="A forgotten user through a replay: `persona forget`, then `persona ingest"
            " --rebuild` of the whole topic, then a new event",
            produced=len(evs) + 1,
            applied=len(evs) - 5 + 1,
            duplicated=0,
            lost=0,
            recovery_s=round(replay_s, 1),
            note="the user's window, vectors and dirty mark gone from the store; a running and"
            " a newly started index replica drop it; the replay skips its 5 old events"
            " (counted as forgotten) and keeps the other user's; an event after the request"
            " starts a new window; recovery = the replay's run time",
        )
    finally:
        first.stop()
        pub.close()
        windows.close()
        vectors.close()
        client.close()
