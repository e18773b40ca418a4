"""SIGKILL the ingest process mid-run, twice; the final windows equal the ground truth.

Runs the real `persona` command as a child process against the embedded broker and a 3-node
Valkey cluster, the way an operator would, and reads the result back with `persona window`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from contract.codec import event_to_json
from services.config import WindowConfig
from services.stack import EmbeddedStack
from services.store.client import connect
from services.store.windows import WindowStore
from tests.integration.ingest_support import committed as committed_offsets
from tests.integration.ingest_support import mismatches, quirky_events, read_topic, truth

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PERSONA = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> int:
    return sum(committed_offsets(bootstrap, topic, group, partitions).values())


def test_sigkill_mid_run_twice_loses_nothing_and_counts_nothing_twice(
    cluster_stack: EmbeddedStack, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    a = cluster_stack.addresses
    topic = make_topic(a.bootstrap, 4, "crash")
    group = f"g-{uuid.uuid4().hex}"
    conn = ["--bootstrap", a.bootstrap, "--redis", a.redis, "--topic", topic]
    env = {
        **os.environ,
        "PERSONA_GROUP": group,
        "PERSONA_MAX_POLL_RECORDS": "300",
        "PERSONA_WINDOW_EVENTS": "32",
    }
    events = quirky_events(users=400, n=24_000, seed=3, prefix=f"{topic}-")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(event_to_json(e) for e in events) + b"\n")
    out = subprocess.run(
        [*PERSONA, "produce", "--file", str(path), *conn],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.splitlines()[-1])["produced"] == len(events)

    kills = []
    for _ in range(2):
        before = committed(a.bootstrap, topic, group, 4)
        proc = subprocess.Popen(
            [*PERSONA, "ingest", *conn],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while committed(a.bootstrap, topic, group, 4) <= before:
                assert time.monotonic() < deadline, "the consumer never committed"
                assert proc.poll() is None, "the consumer exited early"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)  # mid-run: batches are in flight
        finally:
            proc.kill()
            proc.wait(timeout=10)
        kills.append(committed(a.bootstrap, topic, group, 4))
    assert kills[-1] < len(events), "the kills came too late to interrupt anything"

    done = subprocess.run(
        [*PERSONA, "ingest", "--until-idle", *conn],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert committed(a.bootstrap, topic, group, 4) == len(events)

    wcfg = WindowConfig(max_events=32)
    ref = truth(read_topic(a.bootstrap, topic), wcfg)
    client = connect(a.redis)
    try:
        assert mismatches(WindowStore(client, wcfg), ref, a.bootstrap, topic) == []
    finally:
        client.close()
    # And as an operator sees it: `persona window` prints the same events, oldest first.
    uid = max(ref.users, key=lambda u: len(ref.window(u)))
    shown = subprocess.run(
        [*PERSONA, "window", uid, *conn],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert [json.loads(line) for line in shown] == [e.to_json_dict() for e in ref.window(uid)]
