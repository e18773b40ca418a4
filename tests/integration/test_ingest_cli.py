"""`persona ingest` as a long-running service: /metrics scraped live, SIGTERM drains and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable

import pytest

from services.ingest.produce import produce_events
from services.stack import EmbeddedStack, free_ports
from tests.integration.ingest_support import kcfg_for, quirky_events

pytestmark = pytest.mark.integration
PERSONA = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_endpoint_and_sigterm(stack: EmbeddedStack, make_topic: Callable[..., str]) -> None:
    a = stack.addresses
    topic = make_topic(a.bootstrap, 2, "cli")
    group = f"g-{uuid.uuid4().hex}"
    n = produce_events(kcfg_for(a.bootstrap, topic, group), quirky_events(50, 800, 5, topic))
    (port,) = free_ports(1)
    cmd = [
        *PERSONA,
        "ingest",
        "--bootstrap",
        a.bootstrap,
        "--redis",
        a.redis,
        "--topic",
        topic,
        "--group",
        group,
        "--metrics-port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                seen = scrape(port)
            except OSError:
                seen = {}
            # consumed counts at poll time, applied/duplicate only after the store
            # acked (the write overlaps the next poll), so wait for the latter.
            done = seen.get("persona_ingest_events_applied_total", 0) + seen.get(
                "persona_ingest_events_duplicate_total", 0
            )
            if done >= n:
                break
            time.sleep(0.3)
        assert seen["persona_ingest_events_consumed_total"] == n
        applied = seen["persona_ingest_events_applied_total"]
        assert applied + seen["persona_ingest_events_duplicate_total"] == n
        assert any(k.startswith("persona_ingest_consumer_lag_records{") for k in seen)
        assert seen["persona_ingest_batch_write_seconds_count"] >= 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
