"""Refresh workers as real `persona refresh --share-group` processes, and what to read off them.

Each worker is a `services.children.Child` (dies with the test process, logs to a file in a
temporary folder the caller removes). Its log holds the share's assignment lines
(`refresh share: ... partitions [..]`) and, after a clean stop, the run's stats as one JSON
line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.children import Child, die_with_parent
from services.stack import StackAddresses
from services.store.client import Client
from services.store.vectors import VectorStore

ROOT = Path(__file__).resolve().parents[2]
RANGES = 32
_ASSIGNED = re.compile(r"refresh share: \d+ of \d+ bucket ranges .*: partitions \[([0-9, ]*)\]")
_REVOKED = re.compile(r"refresh share: \d+ bucket ranges (revoked|lost)")


@dataclass(frozen=True)
class Group:
    """What every worker of one test shares: the stack, the registry, the names."""

    addresses: StackAddresses
    models: Path
    name: str  # the group id; also names the shares and update-log topics
    logs: Path

    def worker(self, i: int, batch_size: int = 32) -> Child:
        a = self.addresses
        argv = [
            sys.executable, "-m", "services.cli", "refresh",
            "--bootstrap", a.bootstrap, "--redis", a.redis, "--models", str(self.models),
            "--embeddings-topic", f"{self.name}.emb", "--share-group", self.name,
            "--batch-size", str(batch_size), "--interval", "0.3",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
        env |= {
            "PERSONA_REFRESH_SHARES_TOPIC": f"{self.name}.shares",
            "PERSONA_REFRESH_SHARE_RANGES": str(RANGES),
            "PERSONA_REFRESH_CHECK_EVERY_S": "0.1",
            "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        child = Child(f"refresh-{i}", argv, self.logs / f"refresh-{i}.log", ROOT)
        with open(child.log_path, "ab") as out:  # `Child.start`, with an environment
            child.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent(os.getpid()),
            )  # fmt: skip
        return child


def assignment(child: Child) -> list[int] | None:
    """The partitions the worker holds by its log's last share line (None: none yet, or
    revoked and not assigned again)."""
    last: list[int] | None = None
    for line in child.log_tail(1 << 20).splitlines():
        if m := _ASSIGNED.search(line):
            last = [int(p) for p in m.group(1).split(",") if p.strip()]
        elif _REVOKED.search(line):
            last = None
    return last


def stable(workers: Sequence[Child]) -> bool:
    """Every live worker holds some partitions, and together they hold each exactly once."""
    held = [assignment(w) for w in workers if w.alive()]
    if any(not h for h in held):
        return False
    flat = sorted(p for h in held for p in h or [])
    return flat == list(range(RANGES))


def stats(child: Child) -> dict[str, Any]:
    """The run's stats, the JSON line a cleanly stopped `persona refresh` prints."""
    for line in reversed(child.log_tail(1 << 20).splitlines()):
        if line.startswith("{") and '"passes"' in line:
            return dict(json.loads(line))
    raise AssertionError(f"{child.name} printed no stats:\n{child.log_tail()}")


def wait_until(
    what: str, cond: Callable[[], bool], timeout_s: float, workers: Sequence[Child]
) -> float:
    """Poll `cond` until true; fail with every worker's log tail. Returns the seconds waited."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            tails = "\n".join(f"--- {w.name}:\n{w.log_tail(2000)}" for w in workers)
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tails}")
        time.sleep(0.2)
    return time.monotonic() - t0


def stop(workers: Sequence[Child], timeout_s: float = 60.0) -> None:
    """SIGTERM each (it finishes its batch, leaves the group, prints its stats); SIGKILL
    whatever is still up after `timeout_s`."""
    for w in workers:
        w.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for w in workers:
        if not w.wait(deadline - time.monotonic()):
            w.kill()


def missing_vectors(client: Client, users: Sequence[str], version: str) -> int:
    """Users without a vector under `version`."""
    vs = VectorStore(client)
    try:
        return sum(1 for h in vs.get_batch(users, version) if not h)
    finally:
        vs.close()
