"""The refresher and forgotten users, against a real store and broker: a batch encoded
before a forget cannot bring the user back, and the loop's expiry forgets inactive users
(store and every replica's index)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from contract.events import Event
from services.cli import main
from services.common.kafka import producer
from services.config import KafkaConfig
from services.index import IndexConfig, LookalikeIndex
from services.index.follower import IndexFollower
from services.refresh.config import RefreshConfig
from services.refresh.encoders import EncoderCache
from services.refresh.forget import forget_users
from services.refresh.metrics import refresh_metrics
from services.refresh.publish import Publisher
from services.refresh.refresher import Refresher
from services.store.forget import StoreForgetter
from services.store.vectors import VectorStore
from tests.refresh.conftest import Env
from tests.refresh.support import T0, add_events
from tests.store_support import UserUpdate, apply_events

pytestmark = pytest.mark.integration


def _publisher(env: Env) -> Publisher:
    return Publisher(producer(KafkaConfig(bootstrap=env.bootstrap)), env.topic)


def _refresher(
    env: Env, forgetter: StoreForgetter, reg: CollectorRegistry | None = None, **cfg: object
) -> Refresher:
    rc = RefreshConfig(embeddings_topic=env.topic, batch_size=64, interval_s=0.2,
                       check_every_s=0.05, **cfg)  # type: ignore[arg-type]  # fmt: skip
    return Refresher(
        rc, env.windows, VectorStore(env.client), _publisher(env),
        EncoderCache(env.models, "cpu"), refresh_metrics(reg or CollectorRegistry()),
        forgetter=forgetter,
    )  # fmt: skip


class BrokerDown(Publisher):
    """A publisher whose tombstones the broker fails (the vectors go out)."""

    def tombstones(self, pairs: Sequence[tuple[str, str]]) -> None:
        raise RuntimeError("broker unreachable")


def _owed(forgetter: StoreForgetter) -> set[str]:
    """The users whose tombstones the store keeps owed."""
    return {u for chunk in forgetter.pending() for u in chunk}


def _indexed(env: Env, users: list[str], dim: int) -> list[str]:
    """The users a replica started now holds in its index of the active version."""
    index = LookalikeIndex(IndexConfig(dim=dim, exact_below=1000, gpu="off"))
    follower = IndexFollower(env.bootstrap, env.topic, index, env.vectors.active_version())
    try:
        assert follower.catch_up(30)
        return [u for u in users if index.vector_of(u) is not None]
    finally:
        follower.stop()


def test_a_batch_encoded_before_a_forget_is_refused_and_tombstoned(env: Env) -> None:
    users = ["r0", "r1"]
    add_events(env.windows, users, 3, seed=2)
    forgetter = StoreForgetter(env.client)
    pub = _publisher(env)
    try:
        _refresher(env, forgetter).run(threading.Event(), until_idle=True)
        [[v]] = env.vectors.get_batch(["r0"], env.v1)
        assert _indexed(env, users, v.vector.size) == users
        add_events(env.windows, users, 2, seed=3, offset0=100)  # both dirty again
        racing = _refresher(env, forgetter)
        try:
            wins = env.windows.read(users)
            batch = racing.prepare_windows(wins, [env.v1], clear_dirty=True, t0=0.0)
            forget_users(forgetter, pub, ["r0"], time.time_ns() // 1_000_000)  # meanwhile
            res = racing.commit(batch)  # publishes r0's vector, then the store refuses it
        finally:
            racing.close()
        assert res.forgotten == [("r0", env.v1)] and res.written == 1
        assert [len(x) for x in env.vectors.get_batch(users, env.v1)] == [0, 1]
        assert _indexed(env, users, v.vector.size) == ["r1"]  # the log ends with a tombstone
    finally:
        pub.close()
        forgetter.close()


def test_the_loop_expires_users_without_recent_events(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time_ns() // 1_000_000
    add_events(env.windows, ["x-old"], 3, seed=4)  # events of November 2025
    recent = [(k, Event("x-new", f"n{k}", now - 86_400_000 + k, "view", {"item": "i1"}))
              for k in range(3)]  # fmt: skip
    apply_events(env.windows, [UserUpdate("x-new", 0, recent)])
    forgetter = StoreForgetter(env.client)
    reg = CollectorRegistry()
    try:
        refresher = _refresher(env, forgetter, reg, expire_after_days=7.0)
        stats = refresher.run(threading.Event(), until_idle=True)
    finally:
        forgetter.close()
    assert stats.expired == 1
    assert reg.get_sample_value("persona_refresh_users_expired_total") == 1
    old, new = env.windows.read(["x-old", "x-new"])
    assert old.events == [] and len(new.events) == 3
    got = env.vectors.get_batch(["x-old", "x-new"], env.v1)
    assert [len(x) for x in got] == [0, 1]
    assert _indexed(env, ["x-old", "x-new"], got[1][0].vector.size) == ["x-new"]

    # the same pass on demand: `persona forget --expired` (and no ids nor --expired: usage)
    add_events(env.windows, ["x-old2"], 2, seed=5, offset0=50)
    conn = ["--redis", env.url, "--bootstrap", env.bootstrap, "--embeddings-topic", env.topic]
    assert main(["forget", *conn]) == 2
    assert main(["forget", "u" * 257, *conn]) == 2  # its tombstone's key: refused for good
    assert "at most 256 bytes" in capsys.readouterr().err
    assert main(["forget", "--expired", "--expire-after-days", "7", *conn]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["forgotten"], out["windows"]) == (1, 1)
    assert [len(w.events) for w in env.windows.read(["x-old2", "x-new"])] == [0, 3]


def test_tombstones_a_failed_publish_owed_are_published_by_the_next_cycle(env: Env) -> None:
    """A forget whose tombstones the broker failed: the request raises, the store keeps them
    owed, and the refresher's next expiry cycle (the expiry itself off) publishes them, so
    every replica's index drops the user; nothing is owed after."""
    users = ["t0", "t1"]
    add_events(env.windows, users, 3, seed=5)
    forgetter = StoreForgetter(env.client)
    down = BrokerDown(producer(KafkaConfig(bootstrap=env.bootstrap)), env.topic)
    try:
        refresher = _refresher(env, forgetter)
        refresher.run(threading.Event(), until_idle=True)
        [[v]] = env.vectors.get_batch(["t0"], env.v1)
        with pytest.raises(RuntimeError, match="unreachable"):
            forget_users(forgetter, down, ["t0"], time.time_ns() // 1_000_000)
        assert _indexed(env, users, v.vector.size) == users  # the log still has t0's vector
        assert "t0" in _owed(forgetter)
        _refresher(env, forgetter).run(threading.Event(), until_idle=True)  # one cycle
        assert _indexed(env, users, v.vector.size) == ["t1"]
        assert not _owed(forgetter) & set(users)
    finally:
        down.close()
        forgetter.close()


def test_a_user_back_after_a_forget_keeps_its_new_vector_when_owed_ones_go_out(
    env: Env,
) -> None:
    """A forget whose tombstones failed, then new events from the same user (after the
    forget time) and a refresh: the owed tombstones go out only for versions the store holds
    no vector of; the user's new vector stays the log's last word for its version (a
    tombstone after it had hidden the returning user from every index)."""
    users = ["b0", "b1"]
    add_events(env.windows, users, 3, seed=6)
    forgetter = StoreForgetter(env.client)
    down = BrokerDown(producer(KafkaConfig(bootstrap=env.bootstrap)), env.topic)
    try:
        _refresher(env, forgetter).run(threading.Event(), until_idle=True)
        [[v]] = env.vectors.get_batch(["b0"], env.v1)
        with pytest.raises(RuntimeError, match="unreachable"):
            forget_users(forgetter, down, ["b0"], T0 + 10_000)  # after its first events
        add_events(env.windows, ["b0"], 2, seed=7, offset0=100)  # back, after the forget
        _refresher(env, forgetter).run(threading.Event(), until_idle=True)
        assert len(env.vectors.get_batch(["b0"], env.v1)[0]) == 1  # its new vector
        assert _indexed(env, users, v.vector.size) == users
        assert not _owed(forgetter) & set(users)
    finally:
        down.close()
        forgetter.close()
