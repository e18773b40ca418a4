"""A Valkey node lost with its data after vectors were written: the rebuild replay refills the
windows of its shard, marks those users dirty, and the refresher re-encodes them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from services.config import WindowConfig
from services.ingest.produce import produce_events
from services.stack import EmbeddedStack, StackConfig
from services.store import layout
from services.store.client import connect
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.faults.test_refresh_faults import _refresh, tiny_model  # noqa: F401 - fixture
from tests.integration.ingest_support import ingest_until_idle, kcfg_for, quirky_events

pytestmark = [pytest.mark.integration, pytest.mark.faults]
WCFG = WindowConfig(max_events=32)


def _refresh_until_idle(redis: str, bootstrap: str, models: Path) -> None:
    proc = _refresh(redis, bootstrap, models, "--until-idle")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]


def test_users_of_a_lost_shard_are_re_encoded(
    tiny_model: tuple[Path, str],  # noqa: F811
    report: Callable[..., None],
) -> None:
    models, version = tiny_model
    with EmbeddedStack(StackConfig(cluster=True, partitions=2)) as stack:
        a = stack.addresses
        kcfg = kcfg_for(a.bootstrap, a.topic, f"g-{uuid.uuid4().hex}")
        events = quirky_events(users=300, n=3000, seed=31, prefix="ls")
        produce_events(kcfg, events)
        ingest_until_idle(kcfg, a.redis, WCFG)
        _refresh_until_idle(a.redis, a.bootstrap, models)
        users = sorted({e.user_id for e in events})
        client = connect(a.redis)
        try:
            vectors = VectorStore(client)
            assert all(vectors.get_batch(users, version))  # every user has a vector

            stack.kill_valkey(1)
            stack.restart_valkey(1)  # empty: windows, vectors and dirty marks of a shard gone
            client.close()
            client = connect(a.redis)
            vectors, windows = VectorStore(client), WindowStore(client, WCFG)
            lost_port = int(a.redis_nodes[1].rsplit(":", 1)[1])
            on_lost = [
                u
                for u in users
                if int(client.nodes_manager.get_node_from_slot(
                    client.keyslot(layout.window_key(u))).port) == lost_port
            ]  # fmt: skip
            assert on_lost and sum(1 for v in vectors.get_batch(on_lost, version) if v) == 0

            t0 = time.monotonic()
            rebuild = ingest_until_idle(
                kcfg_for(a.bootstrap, a.topic, f"r-{uuid.uuid4().hex}"), a.redis, WCFG, True
            )
            assert windows.dirty_count() == len(on_lost)  # exactly the lost shard's users
            _refresh_until_idle(a.redis, a.bootstrap, models)
            recovery = time.monotonic() - t0
            wins = windows.read(users)
            got = vectors.get_batch(users, version)
            missing = sum(1 for v in got if not v)
            stale = sum(
                1 for w, v in zip(wins, got, strict=True) if v and v[0].window_version != w.version
            )
            assert (missing, stale) == (0, 0)
            assert windows.dirty_count() == 0
        finally:
            client.close()
    report(
        scenario="Valkey node lost after vectors were written: rebuild replay + refresh",
        produced=len(events),
        applied=rebuild.stats.applied,
        duplicated=0,
        lost=missing + stale,
        recovery_s=round(recovery, 1),
        note=f"{len(on_lost)} users on the lost shard: windows refilled by `persona ingest"
        f" --rebuild`, marked dirty, re-encoded; the other shards' users untouched",
    )
