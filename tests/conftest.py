"""Shared pytest fixtures: the embedded stack, started once per session and only when asked.

- `stack`: Tansu + one Valkey node. `cluster_stack`: Tansu + a 3-node Valkey cluster.
  Both are session-scoped and started lazily (a run that never asks for them starts
  nothing); they are stopped in the fixture's `finally`, and children die with pytest
  anyway (PR_SET_PDEATHSIG), so a crashed run leaves nothing behind.
- Tests share these stacks: make your own topics and groups with `unique_name` /
  `fresh_topic` / `make_topic`, and do not kill or restart the shared stacks' processes
  (build a private `EmbeddedStack` for fault tests).
- `report`: a reliability scenario's row. With PERSONA_RELIABILITY_OUT=path set, the rows of
  the session are written there as JSON lines at the end of the run; `make reliability`
  runs the scenarios (tests/faults and the few outside it that the Makefile names) and
  `tests/faults/report.py` renders them into docs/reliability.md.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis' per-example deadline (200 ms) and its "input generation is slow" health check
# are timing assertions: a loaded CI machine trips them on correct code (a fresh-clone run
# failed the tokenizer's equivalence test on the second). Examples are still generated,
# shrunk and reported; only the clock is off.
settings.register_profile("persona", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("persona")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` run as a script does not put the repo root on the path
    sys.path.insert(0, str(ROOT))

from services.common.kafka_admin import TopicSpec, ensure_topics  # noqa: E402
from services.stack import EmbeddedStack, StackConfig  # noqa: E402
from tests.tls_support import make_certs  # noqa: E402

log = logging.getLogger(__name__)
_counter = itertools.count()


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{time.monotonic_ns() % 1_000_000}"


def _started(cfg: StackConfig, label: str) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(cfg)
    t0 = time.monotonic()
    try:
        stack.start()
        log.info("%s started in %.2f s", label, time.monotonic() - t0)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack() -> Iterator[EmbeddedStack]:
    """Tansu + a single Valkey node, shared by the whole session."""
    yield from _started(StackConfig(cluster=False), "stack")


@pytest.fixture(scope="session")
def cluster_stack() -> Iterator[EmbeddedStack]:
    """Tansu + a 3-node Valkey cluster (slots split evenly, cluster_state:ok)."""
    yield from _started(StackConfig(cluster=True), "cluster_stack")


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """`unique_name("group")` -> a name no other test (or earlier run) uses."""
    return _unique


@pytest.fixture
def make_topic() -> Callable[..., str]:
    """`make_topic(bootstrap, partitions=4, prefix="t", config=None)` creates a new topic."""

    def make(
        bootstrap: str, partitions: int = 4, prefix: str = "t", config: dict | None = None
    ) -> str:
        name = _unique(prefix)
        ensure_topics(bootstrap, [TopicSpec(name, partitions, config)])
        return name

    return make


@pytest.fixture
def fresh_topic(stack: EmbeddedStack, make_topic: Callable[..., str]) -> str:
    """A new 4-partition topic on the single-node `stack`'s broker."""
    return make_topic(stack.addresses.bootstrap, 4, "fresh")


_ROWS: list[dict[str, Any]] = []


@pytest.fixture
def report() -> Callable[..., None]:
    """`report(scenario=..., produced=, applied=, duplicated=, lost=, recovery_s=, note=)`"""

    def add(**row: Any) -> None:
        _ROWS.append(row)

    return add


@pytest.fixture(scope="session", autouse=True)
def _write_report() -> Iterator[None]:
    yield
    out = os.environ.get("PERSONA_RELIABILITY_OUT")
    if out and _ROWS:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            for row in _ROWS:
                fh.write(json.dumps(row) + "\n")


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PEM files of tests/tls_support.py's `make_certs` (CAs ca and rogue; server,
    client, intruder), made once a session; a test that needs them skips without openssl."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    return make_certs(tmp_path_factory.mktemp("certs"))
