"""deploy/compose.yaml: what can be checked without a container engine.

- the file parses (anchors and merge keys included) and holds the full stack: Kafka in
  KRaft mode, a Valkey cluster, Prometheus, Grafana, and the three Persona services;
- each Persona service's command is a real `persona` command line (parsed by the CLI's own
  parser, with the service's environment applied, so typed PERSONA_* values are checked too);
- every PERSONA_* variable it sets is one the code reads;
- every published port is the service's gRPC or metrics port, and Prometheus scrapes each
  service on the metrics port it really opens;
- the files it mounts exist, and Grafana's datasource uid is the one the dashboard uses;
- the Go front's service (entrypoint `persona-front`) resolves, with the built binary's
  `-print-settings`, to the published gRPC port, persona-serve's port as its upstream, the
  metrics port Prometheus scrapes, and persona serve's own environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.go_support import front_bin, go_env, run_front
from tests.ops.support import (
    DASHBOARD,
    DEPLOY,
    PROM,
    RUNTIME_ENV,
    env_vars_read_by_code,
    parse_persona,
)

__all__ = ["front_bin", "go_env"]  # fixtures: the Go front's settings resolved by its binary

COMPOSE = DEPLOY / "compose.yaml"
PERSONA = {"persona-ingest": "ingest", "persona-refresh": "refresh", "persona-serve": "serve"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    return doc["services"]


def _persona_services(services: dict[str, Any]) -> dict[str, Any]:
    """The services that run a `persona` command line (the Go front's is its own binary)."""
    return {
        name: svc
        for name, svc in services.items()
        if (str(svc.get("image", "")).startswith("persona:")
            or svc.get("build", {}).get("dockerfile") == "deploy/Dockerfile")
        and svc.get("entrypoint") != ["persona-front"]
    }  # fmt: skip


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _parsed(svc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    for key in [k for k in os.environ if k.startswith("PERSONA_")]:
        monkeypatch.delenv(key)
    for key, value in _env(svc).items():
        monkeypatch.setenv(key, value)
    return parse_persona([str(a) for a in svc["command"]])


def test_full_stack_is_there(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    roles = kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert "controller" in roles and "broker" in roles, "Kafka is not in KRaft combined mode"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka["environment"]
    nodes = [s for s in services.values() if "--cluster-enabled" in s.get("command", [])]
    assert len(nodes) >= 3, "no 3-node Valkey/Redis cluster"
    assert "--cluster" in " ".join(services["valkey-init"]["command"])
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert set(PERSONA) <= set(_persona_services(services))


def test_persona_commands_parse(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in _persona_services(services).items():
        with monkeypatch.context() as m:
            try:
                args = _parsed(svc, m)
            except SystemExit:
                pytest.fail(f"{name}: `persona {' '.join(svc['command'])}` does not parse")
        if name in PERSONA:
            assert args.command == PERSONA[name], name


def test_env_vars_are_read_by_code(services: dict[str, Any]) -> None:
    read = env_vars_read_by_code()
    for name, svc in _persona_services(services).items():
        unknown = set(_env(svc)) - read - RUNTIME_ENV
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


def test_ports_match_flags_and_scrape_targets(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    scrape = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    for name, svc in _persona_services(services).items():
        with monkeypatch.context() as m:
            args = _parsed(svc, m)
        opened = {p for p in (getattr(args, "metrics_port", 0), getattr(args, "port", 0)) if p}
        for mapping in svc.get("ports", []):
            container = int(str(mapping).split(":")[-1].split("/")[0])
            assert container in opened, f"{name} publishes {container}, opens {sorted(opened)}"
        if name in PERSONA:
            assert args.metrics_port, f"{name} has no /metrics port"
            assert f"{name}:{args.metrics_port}" in targets, f"Prometheus does not scrape {name}"


def test_mounted_files_exist_and_datasource_matches(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = str(vol).split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name} mounts missing {src}"
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())[
        "datasources"
    ][0]
    assert ds["type"] == "prometheus"
    board = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p}
    assert uids == {"${datasource}"}, "panels name the datasource variable, not one uid"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == ds["type"]


def test_dashboard_filters_by_job_and_namespace() -> None:
    from tests.ops.support import dashboard_exprs, promql_metric_names, promql_selector_labels

    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for name in ("job", "namespace"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    for title, expr in dashboard_exprs():
        selected = {
            m for m, labels in promql_selector_labels(expr) if {"job", "namespace"} <= labels
        }
        assert promql_metric_names(expr) <= selected, f"{title}: {expr}"
        assert "$job" in expr and "$namespace" in expr, title


def _port(hostport: str) -> int:
    return int(hostport.rsplit(":", 1)[1])


def test_front_resolves_to_the_published_ports_and_serve_upstream(
    services: dict[str, Any], front_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    front, serve = services["persona-front"], services["persona-serve"]
    assert front["entrypoint"] == ["persona-front"] and front["image"] == serve["image"]
    proc = run_front(front_bin, *front["command"], "-print-settings", env=_env(front))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    published = {int(str(m).split(":")[-1]) for m in front["ports"]}
    assert published == {_port(got["listen"]), _port(got["metrics_listen"])}
    with monkeypatch.context() as m:
        serve_args = _parsed(serve, m)
    assert got["upstream"] == f"persona-serve:{serve_args.port}"
    assert _env(front) == _env(serve), "the front and persona serve read one environment"
    # the versions' short-term heads: persona serve's registry volume, read only
    assert f"models:{got['models']}:ro" in front["volumes"]
    assert any(str(v).startswith(f"models:{got['models']}") for v in serve["volumes"])
    scrape = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "persona-serve"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert f"persona-front:{_port(got['metrics_listen'])}" in targets
    assert not any(str(m).endswith(f":{serve_args.port}") for m in serve["ports"]), (
        "persona serve's gRPC port is published: callers would bypass the front"
    )
