"""Every metric the dashboard and the alert rules name is one the code really exports.

Path taken per service: all three run for real, and the Go front (`persona-front`, built
from front/go) before the scraped `persona serve`. `persona ingest`, `persona serve` (which
also carries the lookalike index's `persona_index_*` metrics through its update-log
follower) and `persona refresh` are started as processes against the embedded `stack`
fixture, each with `--metrics-port`, and `http://127.0.0.1:PORT/metrics` is scraped; names
come from the `# HELP` / `# TYPE` lines, which labelled metrics without children have too.
None needed the fallback (metric objects built into a fresh CollectorRegistry served with
`prometheus_client.start_http_server`). A fresh registry is used for one thing a scrape
cannot tell: the label names of labelled metrics with no children yet, so label matchers
and by(...) clauses are checked too.

The processes use their own topics, consumer group and Valkey database (db 13) on the shared
stack, so they touch no other test's data; refresh runs with an empty model registry (it
waits for a model and still serves /metrics). All are stopped (SIGTERM, then SIGKILL) in
`finally`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc as pb_grpc

from services.stack import EmbeddedStack, free_ports
from tests.go_support import front_bin, go_env, launch_front, stop_front
from tests.ops.support import (
    PROM,
    PROMETHEUS_SERIES,
    ROOT,
    TARGET_LABELS,
    base_metric,
    code_metric_labels,
    dashboard_exprs,
    exposition_names,
    promql_grouping_labels,
    promql_metric_names,
    promql_selector_labels,
    rules,
)

pytestmark = pytest.mark.integration
__all__ = ["front_bin", "go_env"]  # fixtures: the Go front, scraped beside persona serve

STARTUP_S = 120.0  # refresh imports torch: ~20 s on 2 busy cores


def _scrape(port: int | str) -> str:
    """/metrics on 127.0.0.1:`port`, or on `port` given as HOST:PORT."""
    where = port if isinstance(port, str) else f"127.0.0.1:{port}"
    with urllib.request.urlopen(f"http://{where}/metrics", timeout=2) as resp:
        return resp.read().decode()


def _start_front(front_bin: Path, grpc_port: int, redis: str, env: dict[str, str]) -> tuple[
    subprocess.Popen[str], str
]:  # fmt: skip
    """persona-front before the module's persona serve, with one GetEmbeddings through it
    (forwarded: no version is active), so its labelled counters have children to read the
    label names from. -> (process, its metrics HOST:PORT)."""
    proc, info = launch_front(front_bin, grpc_port, f"{redis}/13", "-dim", "16",
                              "-metrics-listen", "127.0.0.1:0", stderr=subprocess.DEVNULL,
                              env=env)  # fmt: skip
    try:
        with grpc.insecure_channel(info["listen"]) as ch, contextlib.suppress(grpc.RpcError):
            req = pb.GetEmbeddingsRequest(user_ids=["u1"])
            stub = pb_grpc.UserEmbeddingServiceStub(ch)
            stub.GetEmbeddings(req, timeout=30, wait_for_ready=True)
        return proc, info["metrics"]
    except BaseException:
        stop_front(proc)
        raise


def _sample_labels(text: str) -> dict[str, set[str]]:
    """Base metric name -> label names, from a page's sample lines (the Go front's: its
    metrics are not Python objects `code_metric_labels` can build)."""
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"(?m)^([a-zA-Z_:][\w:]*)\{([^}]*)\}", text):
        names = set(re.findall(r'(\w+)="', m.group(2))) - {"le"}
        out.setdefault(base_metric(m.group(1)), set()).update(names)
    return out


@pytest.fixture(scope="module")
def scraped(
    stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory, front_bin: Path
) -> Iterator[dict[str, str]]:
    """{service: /metrics text} from live ingest, serve and refresh processes, and the Go
    front before that persona serve."""
    a = stack.addresses
    tag = f"ops-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    models = tmp_path_factory.mktemp("models")
    m_ingest, m_serve, m_refresh, grpc_port = free_ports(4)
    base = [sys.executable, "-m", "services.cli"]
    conn = ["--bootstrap", a.bootstrap, "--redis", f"{a.redis}/13", "--topic", f"{tag}.events"]
    commands = {
        "ingest": [*base, "ingest", *conn, "--group", tag, "--metrics-port", str(m_ingest)],
        "serve": [
            *base, "serve", *conn, "--models", str(models), "--embeddings-topic",
            f"{tag}.embeddings", "--host", "127.0.0.1", "--port", str(grpc_port),
            "--dim", "16", "--metrics-port", str(m_serve),
        ],
        "refresh": [
            *base, "refresh", *conn, "--models", str(models), "--embeddings-topic",
            f"{tag}.embeddings", "--metrics-port", str(m_refresh),
        ],
    }  # fmt: skip
    ports = {"ingest": m_ingest, "serve": m_serve, "refresh": m_refresh}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    env |= {"PERSONA_PARTITIONS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    logs = {name: tmp_path_factory.mktemp("logs") / f"{name}.log" for name in commands}
    procs: dict[str, subprocess.Popen[Any]] = {}
    front: subprocess.Popen[str] | None = None
    try:
        for name, cmd in commands.items():
            with logs[name].open("wb") as log:
                procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        texts: dict[str, str] = {}
        deadline = time.monotonic() + STARTUP_S
        while len(texts) < len(commands) and time.monotonic() < deadline:
            for name, proc in procs.items():
                if name in texts:
                    continue
                if proc.poll() is not None:
                    pytest.fail(f"persona {name} exited {proc.returncode}: {_tail(logs[name])}")
                with contextlib.suppress(OSError):
                    texts[name] = _scrape(ports[name])
            time.sleep(0.3)
        missing = set(commands) - set(texts)
        assert not missing, f"no /metrics from {missing}: " + " | ".join(
            _tail(logs[n]) for n in missing
        )
        front, front_metrics = _start_front(front_bin, grpc_port, a.redis, env)
        time.sleep(1.0)  # let ingest set its per-partition lag once, then scrape again
        yield {name: _scrape(ports[name]) for name in commands} | {"front": _scrape(front_metrics)}
    finally:
        if front is not None:
            stop_front(front)  # its pipe closed too
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _tail(path: Path, n: int = 1500) -> str:
    return path.read_bytes()[-n:].decode(errors="replace")


@pytest.fixture(scope="module")
def exported(scraped: dict[str, str]) -> set[str]:
    names: set[str] = set()
    for text in scraped.values():
        names |= exposition_names(text)
    return names


def _used() -> dict[str, str]:
    """Query text by where it is used: dashboard panels, alert/recording rules, rule tests."""
    used = {f"dashboard panel '{title}'": expr for title, expr in dashboard_exprs()}
    used |= {f"rule {r.get('alert') or r.get('record')}": r["expr"] for r in rules()}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    for t in tests["tests"]:
        for s in t.get("input_series", []):
            used[f"rule test input of '{t['name']}'"] = (
                used.get(f"rule test input of '{t['name']}'", "") + " " + s["series"]
            )
    return used


def test_each_service_exports_its_family(scraped: dict[str, str]) -> None:
    assert "persona_ingest_events_consumed" in scraped["ingest"]
    assert "persona_serving_requests_total" in scraped["serve"]
    assert "persona_index_update_log_lag_records" in scraped["serve"]
    assert "persona_refresh_event_to_vector_seconds" in scraped["refresh"]
    assert 'persona_front_get_embeddings_total{outcome="forwarded"} 1' in scraped["front"]


def test_dashboard_and_rules_name_exported_metrics(exported: set[str]) -> None:
    unknown: dict[str, set[str]] = {}
    for where, expr in _used().items():
        missing = promql_metric_names(expr) - exported
        if missing:
            unknown[where] = missing
    assert not unknown, f"names no service exports: {unknown}"
    # and the dashboard covers every family
    dash = " ".join(e for _, e in dashboard_exprs())
    families = ("persona_ingest_", "persona_refresh_", "persona_serving_", "persona_index_",
                "persona_front_")  # fmt: skip
    for family in families:
        assert family in dash, f"no dashboard panel for {family}*"


def test_labels_in_queries_exist(exported: set[str], scraped: dict[str, str]) -> None:
    labels = code_metric_labels() | _sample_labels(scraped["front"])
    assert {base_metric(n) for n in exported if n.startswith("persona_")} >= set(labels)
    problems = []
    for where, expr in _used().items():
        known = set(TARGET_LABELS)
        for name in promql_metric_names(expr):
            known |= labels.get(base_metric(name), set())
        for name, used in promql_selector_labels(expr):
            if name in PROMETHEUS_SERIES:
                continue
            bad = used - labels.get(base_metric(name), set()) - TARGET_LABELS
            if bad:
                problems.append(f"{where}: {name} has no label(s) {sorted(bad)}")
        bad = promql_grouping_labels(expr) - known
        if bad:
            problems.append(f"{where}: groups by unknown label(s) {sorted(bad)}")
    assert not problems, "\n".join(problems)
