"""The refresher SIGKILLed mid-write, then restarted with `--until-idle`.

Runs the real `persona refresh` as a child process on a private embedded stack (Tansu and a
3-node Valkey cluster) with a tiny trained model (the `tests/refresh` spec). Windows are
written straight into the store; more events arrive for some users while the refresher is
down. The ground truth for every user with a window: one vector of the active version whose
`window_version` is the window's meta `v`, `n_events` as the model saw it, finite values, and
no dirty mark left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from services.config import WindowConfig
from services.stack import EmbeddedStack, StackConfig
from services.store.client import connect
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.faults.support import wait_for
from tests.refresh.conftest import ROOT_DIR, tiny_version
from tests.refresh.support import add_events

pytestmark = [pytest.mark.integration, pytest.mark.faults]
PERSONA = [sys.executable, "-m", "services.cli"]
USERS = 3000


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A registry with one tiny active version (a few seconds of training on the CPU)."""
    root: Path = tmp_path_factory.mktemp("fault-models")
    return root, tiny_version(root)


def _refresh(redis: str, bootstrap: str, models: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [*PERSONA, "refresh", "--redis", redis, "--bootstrap", bootstrap]
    argv += ["--models", str(models), "--batch-size", "32", "--interval", "0.2", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PERSONA_WINDOW_EVENTS": "32"}
    return subprocess.Popen(
        argv, cwd=ROOT_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_refresher_sigkilled_mid_write_then_restarted(
    tiny_model: tuple[Path, str], report: Callable[..., None]
) -> None:
    models, version = tiny_model
    wcfg = WindowConfig(max_events=32)
    with EmbeddedStack(StackConfig(cluster=True, partitions=2)) as stack:
        a = stack.addresses
        client = connect(a.redis)
        proc: subprocess.Popen[str] | None = None
        try:
            windows = WindowStore(client, wcfg)
            vectors = VectorStore(client)
            users = [f"rf{i:05d}" for i in range(USERS)]
            for k in range(0, USERS, 500):
                add_events(windows, users[k : k + 500], 3, seed=k, offset0=k * 3)
            assert windows.dirty_count() == USERS

            proc = _refresh(a.redis, a.bootstrap, models)
            assert proc.stdout is not None and proc.stderr is not None

            def some_written() -> bool:
                assert proc is not None and proc.poll() is None, "refresher exited early"
                return windows.dirty_count() <= USERS - 200

            wait_for(some_written, 120, "the refresher to write its first batches")
            proc.send_signal(signal.SIGKILL)  # mid-run: a batch is being encoded or written
            proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()
            left = windows.dirty_count()
            assert 0 < left < USERS, f"the kill came too late ({left} dirty)"

            # While the refresher is down, 300 users get new events: their windows move on,
            # including users that already have a vector for the older window.
            moved = users[:150] + users[-150:]
            add_events(windows, moved, 2, seed=99, offset0=USERS * 3)

            t0 = time.monotonic()
            proc = _refresh(a.redis, a.bootstrap, models, "--until-idle")
            out, err = proc.communicate(timeout=180)
            recovery = time.monotonic() - t0
            assert proc.returncode == 0, err[-3000:]
            stats = json.loads(out.strip().splitlines()[-1])
            assert stats["users"] >= left  # the restart picked up every user left dirty

            assert windows.dirty_count() == 0
            assert vectors.active_version() == version
            wins = windows.read(users)
            got = vectors.get_batch(users, version, history=4)
            stale = missing = bad = 0
            for w, vals in zip(wins, got, strict=True):
                if not vals:
                    missing += 1
                    continue
                head = vals[0]
                if head.window_version != w.version:
                    stale += 1
                elif head.n_events != min(len(w.events), 32) or not np.all(
                    np.isfinite(head.vector)
                ):
                    bad += 1
                # history is newest first, and never names a window version from the future
                assert all(v.window_version <= w.version for v in vals)
            assert (missing, stale, bad) == (0, 0, 0)
            heads = [vals[0].window_version for vals in got[:150]]
            assert all(h == w.version for h, w in zip(heads, wins[:150], strict=True))
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            client.close()
    report(
        scenario="Refresher (`persona refresh`) SIGKILLed mid-write, restarted `--until-idle`",
        produced=USERS * 3 + len(moved) * 2,
        applied=None,
        duplicated=0,
        lost=missing + stale + bad,
        recovery_s=round(recovery, 1),
        note=f"{USERS} users, {left} still dirty at the kill, 300 windows moved on while it was"
        f" down; every user ends with a vector of its latest window version, none half-written,"
        f" none left dirty (lost = users without a correct current vector)",
    )
