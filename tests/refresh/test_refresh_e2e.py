"""End to end: events produced -> ingested -> refreshed (the CLI) -> versioned vectors in the
store and in a lookalike index fed from the update log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from services.cli import main
from services.index.ann import LookalikeIndex
from services.index.config import IndexConfig
from services.index.follower import IndexFollower
from services.ingest.produce import produce_events
from services.stack import EmbeddedStack
from tests.integration.ingest_support import all_users, ingest_until_idle, kcfg_for, quirky_events
from tests.refresh.conftest import ROOT_DIR, Env

pytestmark = pytest.mark.integration


def _persona(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_events_to_store_and_index(
    env: Env,
    stack: EmbeddedStack,
    make_topic: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    unique_name: Callable[[str], str],
) -> None:
    topic = make_topic(stack.addresses.bootstrap, 2, "e2e")
    kcfg = kcfg_for(stack.addresses.bootstrap, topic, unique_name("g"))
    events = quirky_events(users=120, n=1500, seed=31, prefix="e2e")
    assert produce_events(kcfg, events) == len(events)
    run = ingest_until_idle(kcfg, env.url)
    assert run.stats.applied > 0
    users = sorted(all_users(events))
    assert env.windows.dirty_count() == len(users)

    t0 = time.time() * 1000
    cli = ["--redis", env.url, "--bootstrap", env.bootstrap, "--models", str(env.models)]
    out = _persona("refresh", "--until-idle", "--embeddings-topic", env.topic, *cli)
    assert out.returncode == 0, out.stderr[-3000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["users"] == len(users) and env.windows.dirty_count() == 0

    got = env.vectors.get_batch(users, env.v1)
    wins = env.windows.read(users)
    for w, [v] in zip(wins, got, strict=True):
        assert v.model_version == env.v1 and v.window_version == w.version
        assert v.n_events == min(len(w.events), 32) and v.computed_at_ms >= t0 - 1000
    assert main(["cutover", "status", *cli]) == 0
    assert json.loads(capsys.readouterr().out)["active"] == env.v1

    index = LookalikeIndex(IndexConfig(dim=got[0][0].vector.size))
    follower = IndexFollower(env.bootstrap, env.topic, index, model_version=env.v1)
    try:
        assert follower.catch_up(timeout_s=60)
    finally:
        follower.stop()
    assert index.size == len(users)
    probe = got[5][0]
    [hits] = index.search(probe.vector[None, :], k=3)
    assert hits[0][0] == users[5] and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    stored = got[7][0].vector  # the index keeps its unit copy (it scores by cosine)
    assert np.allclose(index.vector_of(users[7]), stored / np.linalg.norm(stored), atol=1e-6)
