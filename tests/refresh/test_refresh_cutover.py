"""Model version cutover with a running refresher and a concurrent reader."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from encoder import registry
from services.refresh import cutover
from services.refresh.config import RefreshConfig
from services.refresh.refresher import Refresher
from services.store.vectors import VectorStore
from tests.refresh.conftest import Env
from tests.refresh.support import add_events, running

pytestmark = pytest.mark.integration


class Reader(threading.Thread):
    """Reads the active version's vectors of `users` in a loop, like a ranker would."""

    def __init__(self, store: VectorStore, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.store, self.users = store, users
        self.stop = threading.Event()
        self.seen: dict[str, int] = {}
        self.problems: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            ver = self.store.active_version()
            assert ver is not None
            got = self.store.get_batch(self.users, ver)
            self.seen[ver] = self.seen.get(ver, 0) + 1
            versions = {v.model_version for vs in got for v in vs}
            missing = sum(1 for vs in got if not vs)
            if versions != {ver} or missing:
                self.problems.append(f"asked {ver}: got {versions}, {missing} missing")


def test_promote_backfills_then_flips_atomically_rollback_and_pin(env: Env) -> None:
    users = [f"c{i:03d}" for i in range(300)]
    add_events(env.windows, users, 3, seed=11)
    env.refresher().run(threading.Event(), until_idle=True)
    assert env.vectors.active_version() == env.v1
    before = {
        u: vs[0].vector for u, vs in zip(users, env.vectors.get_batch(users, env.v1), strict=True)
    }

    reader = Reader(env.vectors, users)
    reader.start()
    r = env.refresher()
    try:
        with running(r):
            assert cutover.promote(env.vectors, env.models, env.v2) == "backfilling"
            assert env.vectors.active_version() == env.v1
            moved = users[:20]
            add_events(env.windows, moved, 2, seed=12, offset0=90_000)  # dirtied during the cutover
            assert cutover.wait_active(env.vectors, env.v2, timeout_s=60, poll_s=0.05)
            deadline = time.monotonic() + 30
            while env.windows.dirty_count() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            assert cutover.rollback(env.vectors) == (env.v2, env.v1)
            time.sleep(0.3)
    finally:
        reader.stop.set()
        reader.join(30)
    assert not reader.problems, reader.problems[:5]
    assert reader.seen.get(env.v1, 0) > 0 and reader.seen.get(env.v2, 0) > 0
    assert 0 < r.stats.backfilled <= len(users)
    assert cutover.status(env.vectors)["versions"] == {env.v1: "active", env.v2: "ready"}
    wins = {w.user_id: w for w in env.windows.read(users)}
    for ver in (env.v1, env.v2):  # both complete and fresh: pinning either one works
        for u, [v] in zip(users, env.vectors.get_batch(users, ver), strict=True):
            assert v.model_version == ver and v.window_version == wins[u].version
    untouched = users[20:]
    [[a]] = env.vectors.get_batch(untouched[:1], env.v2)
    assert not (a.vector == before[untouched[0]]).all()  # v2's own namespace, own vectors


def test_registry_change_is_followed(env: Env, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(env.models, models)
    env.models = models
    add_events(env.windows, [f"f{i}" for i in range(30)], 2, seed=13)
    env.refresher().run(threading.Event(), until_idle=True)
    assert env.vectors.active_version() == env.v1
    registry.set_active(models, env.v2)  # what `persona model promote` does
    env.refresher().run(threading.Event(), until_idle=True)  # back-fills, flips, then idles
    assert env.vectors.active_version() == env.v2
    assert all(env.vectors.get_batch([f"f{i}" for i in range(30)], env.v2))
    env.vectors.rollback()  # a store-level rollback is not undone by the (stale) registry
    env.refresher().run(threading.Event(), until_idle=True)
    assert env.vectors.active_version() == env.v1
    registry.rollback(models)  # `persona model rollback`: registry says v1 again -> no-op
    env.refresher().run(threading.Event(), until_idle=True)
    assert env.vectors.active_version() == env.v1


def test_a_version_that_cannot_load_never_stops_the_active_ones_refresh(
    env: Env, tmp_path: Path
) -> None:
    """A registry ACTIVE whose files changed, and a back-filling version whose encoder does
    not load: each is counted as a model error and left alone, and the active version's
    users are refreshed meanwhile (each once raised on every loop: no user was written)."""
    models = tmp_path / "models"
    shutil.copytree(env.models, models)
    env.models = models
    users = [f"k{i}" for i in range(20)]
    add_events(env.windows, users, 2, seed=21)
    env.refresher().run(threading.Event(), until_idle=True)
    with (models / env.v2 / "weights.pt").open("ab") as f:
        f.write(b"corrupt")  # no longer what its MANIFEST.json says
    registry.set_active(models, env.v2)  # `persona model promote` of a damaged version
    with pytest.raises(registry.RegistryError, match="MANIFEST"):
        cutover.promote(env.vectors, models, env.v2)

    def refreshed(r: Refresher) -> None:
        add_events(env.windows, users, 1, seed=22, offset0=50_000)
        r.run(threading.Event(), until_idle=True)
        assert env.vectors.active_version() == env.v1 and env.windows.dirty_count() == 0
        wins = env.windows.read(users)
        got = env.vectors.get_batch(users, env.v1)
        assert [vs[0].window_version for vs in got] == [w.version for w in wins]
        assert r.stats.errors >= 1

    refreshed(env.refresher())  # following the registry fails; the refresh goes on
    env.vectors.set_state(env.v2, "backfilling")  # requested before its files were damaged
    r = env.refresher(cfg=replace(RefreshConfig(embeddings_topic=env.topic), follow_registry=False))
    refreshed(r)
    assert env.vectors.versions()[env.v2] == "backfilling" and r.stats.backfilled == 0
