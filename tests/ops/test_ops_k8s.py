"""k8s/: schema validation plus the cross-checks a schema cannot make.

- Every manifest outside k8s/crds/ passes `kubernetes-validate --strict` (Kubernetes 1.37
  schemas from the PyPI package; unknown fields rejected). A control shows --strict rejects
  an unknown field. The custom resources in k8s/crds/ (Strimzi, KEDA, Prometheus Operator)
  are not in those schemas: they are checked for YAML syntax and apiVersion/kind only, plus
  the values Persona depends on (topics, partitions, scale target).
- Each Persona container runs a real `persona` command line with its ConfigMap/env applied;
  every PERSONA_* it gets is read by the code; its ports and probe ports are the ones that
  configuration opens; the serving readiness probe names the real gRPC service. The Go
  front's container is resolved by the built binary (`persona-front -print-settings`): it
  listens on the public port and forwards to persona serve's port in the same pod; the
  PodMonitor scrapes every metrics port.
- Placement and hygiene: the GPU refresher requests nvidia.com/gpu on GPU nodes, every
  container has requests and limits and runs as non-root; Service, PDB and HPA point at the
  serving Deployment; NetworkPolicy ports match the container ports.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.cli import settings
from tests.go_support import front_bin, go_env, run_front
from tests.ops.support import K8S, RUNTIME_ENV, env_vars_read_by_code, parse_persona, yaml_docs

__all__ = ["front_bin", "go_env"]  # fixtures: the Go front built for its container's test
FRONT_COMMAND = "persona-front"

CRDS = K8S / "crds"
PLAIN = sorted(p for p in K8S.rglob("*.yaml") if CRDS not in p.parents)
CRD_KINDS = {
    "kafka.strimzi.io/v1beta2": {"Kafka", "KafkaNodePool", "KafkaTopic"},
    "keda.sh/v1alpha1": {"ScaledObject"},
    "monitoring.coreos.com/v1": {"PodMonitor"},
}
TOPICS = {"persona.events", "persona.events.dlq", "persona.embeddings", "persona.refresh.shares"}


def _docs(paths: list[Path]) -> list[dict[str, Any]]:
    return [d for p in paths for d in yaml_docs(p)]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _docs(PLAIN) if d["kind"] == kind}


def _config() -> dict[str, str]:
    return {k: str(v) for k, v in _by_kind("ConfigMap")["persona-config"]["data"].items()}


def _secret_keys() -> set[str]:
    return set(_by_kind("Secret")["persona-auth"].get("stringData", {}))


def _persona_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(deployment, pod spec, container) for every container in the persona namespace."""
    out = []
    for name, dep in _by_kind("Deployment").items():
        if dep["metadata"]["namespace"] != "persona":
            continue
        pod = dep["spec"]["template"]["spec"]
        out += [(name, pod, c) for c in pod["containers"]]
    return out


def _container_env(c: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            assert src["configMapRef"]["name"] == "persona-config"
            env |= _config()
        if "secretRef" in src:
            assert src["secretRef"]["name"] == "persona-auth"
            env |= dict.fromkeys(_secret_keys(), "secret")
    env |= {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}
    return env


def test_there_is_something_to_validate() -> None:
    names = {p.name for p in PLAIN}
    assert {"ingest.yaml", "refresh-gpu.yaml", "refresh-cpu.yaml", "serve.yaml"} <= names
    assert {"networkpolicy.yaml", "config.yaml"} <= names


def test_kubernetes_validate_strict(kubernetes_validate: Path) -> None:
    proc = subprocess.run(
        [str(kubernetes_validate), "--strict", "--quiet", *map(str, PLAIN)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"kubernetes-validate --strict:\n{proc.stdout}{proc.stderr}"


def test_strict_rejects_unknown_fields(kubernetes_validate: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\nsurprise: 1\n"
    )
    proc = subprocess.run(
        [str(kubernetes_validate), "--strict", "--quiet", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0, "--strict accepted an unknown field"


def test_custom_resources_parse_with_known_kinds() -> None:
    docs = _docs(sorted(CRDS.glob("*.yaml")))
    assert docs
    for d in docs:
        assert d["kind"] in CRD_KINDS.get(d["apiVersion"], set()), (d["apiVersion"], d["kind"])
        assert d["metadata"]["name"] and "spec" in d
    topics = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaTopic"}
    assert set(topics) == TOPICS
    assert topics["persona.embeddings"]["spec"]["config"]["cleanup.policy"] == "compact"
    partitions = int(_config()["PERSONA_PARTITIONS"])
    assert topics["persona.events"]["spec"]["partitions"] == partitions
    kafka = [d for d in docs if d["kind"] == "Kafka"]
    assert len(kafka) == 1 and kafka[0]["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    bootstrap = (
        f"{kafka[0]['metadata']['name']}-kafka-bootstrap.{kafka[0]['metadata']['namespace']}"
    )
    assert _config()["PERSONA_BOOTSTRAP"].startswith(bootstrap)
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] in _by_kind("Deployment")
    assert scaled["spec"]["maxReplicaCount"] <= partitions, "more members than partitions"
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert trigger["topic"] == _config()["PERSONA_TOPIC"]
    assert trigger["consumerGroup"] == _config()["PERSONA_GROUP"]


def test_pod_monitor_scrapes_every_metrics_port() -> None:
    (mon,) = [d for d in _docs(sorted(CRDS.glob("*.yaml"))) if d["kind"] == "PodMonitor"]
    scraped = {e["port"] for e in mon["spec"]["podMetricsEndpoints"]}
    declared = {
        p["name"] for _, _, c in _persona_containers() for p in c["ports"]
        if p["name"].endswith("metrics")
    }  # fmt: skip
    assert declared == scraped


def test_containers_run_real_commands_with_read_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    read = env_vars_read_by_code()
    seen = set()
    for name, _, c in _persona_containers():
        env = _container_env(c)
        unknown = set(env) - read - RUNTIME_ENV
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"
        if c.get("command") == [FRONT_COMMAND]:
            continue  # the Go front's settings: test_front_container_settings
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("PERSONA_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            try:
                args = parse_persona([*c.get("command", []), *c["args"]])
            except SystemExit:
                pytest.fail(f"{name}: `persona {' '.join(c['args'])}` does not parse")
        seen.add(args.command)
        opened = {p for p in (getattr(args, "metrics_port", 0), getattr(args, "port", 0)) if p}
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert set(ports.values()) <= opened, (name, ports, opened)
        assert ports.get("metrics") == args.metrics_port, name
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            spec = c.get(probe)
            if spec is None:
                continue
            port = (spec.get("grpc") or spec.get("httpGet") or spec.get("tcpSocket"))["port"]
            assert ports.get(port, port) in opened, f"{name} {probe} on a closed port {port}"
    assert seen == {"ingest", "refresh", "serve"}


def _serving(name: str) -> dict[str, Any]:
    """The serving pod's container `name` (serve, front)."""
    pod = _by_kind("Deployment")["persona-serve"]["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == name]
    return c


def test_serving_probes_use_grpc_health() -> None:
    """Readiness is the Persona service's health: persona serve's own, and the same answer
    forwarded through the front; the front's liveness is its own listener."""
    from persona.v1 import service_pb2

    full = service_pb2.DESCRIPTOR.services_by_name["UserEmbeddingService"].full_name
    serve, front = _serving("serve"), _serving("front")
    assert "grpc" in serve["livenessProbe"] and "grpc" in serve["readinessProbe"]
    for c in (serve, front):
        assert c["readinessProbe"]["grpc"]["service"] == full, c["name"]
    assert front["livenessProbe"]["tcpSocket"]["port"] == front["readinessProbe"]["grpc"]["port"]


def test_front_container_settings(front_bin: Path) -> None:
    """The front container's command line and environment, resolved by the built binary
    (`-print-settings`): it listens on the pod's public gRPC port (the Services' target,
    the NetworkPolicy's port), forwards to persona serve's port in the same pod, opens the
    metrics port it declares, and reads the same store and token as persona serve."""
    front, serve = _serving("front"), _serving("serve")
    env = _container_env(front)
    proc = run_front(front_bin, *front["args"], "-print-settings", env=env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    ports = {p["name"]: p["containerPort"] for p in front["ports"]}
    assert int(got["listen"].rsplit(":", 1)[1]) == ports["grpc"] == int(env["PERSONA_SERVE_PORT"])
    assert int(got["metrics_listen"].rsplit(":", 1)[1]) == ports["front-metrics"]
    upstream = {p["name"]: p["containerPort"] for p in serve["ports"]}["upstream"]
    assert got["upstream"] == f"127.0.0.1:{upstream}"
    assert int(_container_env(serve)["PERSONA_SERVE_PORT"]) == upstream
    (store,) = got["store"]  # the node address, out of persona serve's redis:// URL
    assert store and env["PERSONA_REDIS"].removeprefix("redis://").startswith(store)
    assert got["auth"] == ("PERSONA_AUTH_TOKEN" in env)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        spec = front[probe]
        assert (spec.get("grpc") or spec.get("tcpSocket"))["port"] == ports["grpc"], probe
    # the versions' short-term heads: the registry persona serve reads, mounted read only
    mounts = {m["mountPath"]: m for m in front["volumeMounts"]}
    assert got["models"] and mounts[got["models"]]["readOnly"] is True
    serve_mounts = {m["name"]: m["mountPath"] for m in serve["volumeMounts"]}
    assert serve_mounts[mounts[got["models"]]["name"]] == _container_env(serve)["PERSONA_MODELS"]
    # only readiness asks persona serve (forwarded): a slow upstream never restarts the front
    assert "tcpSocket" in front["startupProbe"] and "tcpSocket" in front["livenessProbe"]
    # every serving process gets forwarded calls; the pod drains and stops as serve does
    procs = int(_container_env(serve)["PERSONA_SERVE_PROCESSES"])
    assert got["upstream_conns"] >= 8 * procs if procs > 1 else got["upstream_conns"] >= 1
    assert got["drain_s"] == float(env["PERSONA_DRAIN_S"]) > 0
    assert got["grace_s"] <= float(env["PERSONA_GRACE_S"])


def test_serving_pod_stops_in_order_within_its_grace_period() -> None:
    """SIGTERM reaches both containers at once: serve drains longer than the front (a call
    the front takes at the end of its drain is not forwarded into a stopping serve), and
    the pod's grace period covers each one's drain + grace (+ the front's served-log close,
    5 s: front/go/README.md) before the kubelet kills what is left."""
    front, serve = _container_env(_serving("front")), _container_env(_serving("serve"))
    f_drain, s_drain = float(front["PERSONA_DRAIN_S"]), float(serve["PERSONA_DRAIN_S"])
    assert s_drain > f_drain > 0
    f_end = f_drain + float(front["PERSONA_GRACE_S"]) + 5
    s_end = s_drain + float(serve["PERSONA_GRACE_S"])
    pod = _by_kind("Deployment")["persona-serve"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > max(f_end, s_end)


def test_front_go_runtime_follows_its_limits() -> None:
    """Go 1.19 reads neither cgroup limit: GOMAXPROCS from the CPU limit, GOMEMLIMIT under
    the memory limit."""
    c = _serving("front")
    env = {e["name"]: e for e in c["env"]}
    assert env["GOMAXPROCS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}

    def size(v: str) -> float:
        v = v.removesuffix("B")
        return float(v[:-2]) * units[v[-2:]]

    assert size(env["GOMEMLIMIT"]["value"]) < size(c["resources"]["limits"]["memory"])


def test_serving_runs_one_process_per_requested_core() -> None:
    """`persona serve --processes N` answers from N cores: N follows the CPU request."""
    c = _serving("serve")
    procs = int(_container_env(c)["PERSONA_SERVE_PROCESSES"])
    assert procs > 1 and procs == int(c["resources"]["requests"]["cpu"])


def test_gpu_placement_and_cpu_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    deps = _by_kind("Deployment")
    gpu = deps["persona-refresh"]["spec"]["template"]["spec"]
    (c,) = gpu["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert {"name": "PERSONA_DEVICE", "value": "cuda"} in c["env"]
    assert "cuda" in c["image"]
    cpu = deps["persona-refresh-cpu"]["spec"]["template"]["spec"]
    (cc,) = cpu["containers"]
    assert "nvidia.com/gpu" not in cc["resources"]["limits"]
    assert {"name": "PERSONA_DEVICE", "value": "cpu"} in cc["env"]
    # the CPU refresher compiles its encoder's layers, and the setting it sets parses
    assert {"name": "PERSONA_ENCODER_COMPILE", "value": "true"} in cc["env"]
    monkeypatch.setenv("PERSONA_ENCODER_COMPILE", "true")
    assert settings.load().refresh.compile is True


def test_refreshers_scale_by_replicas_in_one_share_group() -> None:
    """Both refresh Deployments join one share group, so their replicas divide the buckets;
    the shares topic has the partitions a refresher would create it with."""
    from services.refresh.config import RefreshConfig

    deps = _by_kind("Deployment")
    groups = set()
    for name in ("persona-refresh", "persona-refresh-cpu"):
        (c,) = deps[name]["spec"]["template"]["spec"]["containers"]
        groups.add(_container_env(c).get("PERSONA_REFRESH_GROUP"))
    assert len(groups) == 1 and None not in groups and "" not in groups, groups
    crds = _docs(sorted(CRDS.glob("*.yaml")))
    (shares,) = [d for d in crds if d["metadata"]["name"] == RefreshConfig().share_topic]
    assert shares["spec"]["partitions"] == RefreshConfig().share_ranges


def test_resources_and_security() -> None:
    for name, pod, c in _persona_containers():
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_service_pdb_hpa_point_at_serving() -> None:
    dep = _by_kind("Deployment")["persona-serve"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    containers = dep["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for c in containers for p in c["ports"]}
    for svc in _by_kind("Service").values():
        if svc["metadata"]["namespace"] != "persona":
            continue
        assert svc["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    pdb = _by_kind("PodDisruptionBudget")["persona-serve"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _by_kind("HorizontalPodAutoscaler")["persona-serve"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "persona-serve"
    assert hpa["spec"]["minReplicas"] >= 2, "a PDB with one replica blocks node drains"


def test_network_policy_ports_match_containers() -> None:
    cfg = _config()
    pols = _by_kind("NetworkPolicy")
    assert pols["default-deny"]["spec"]["podSelector"] == {}
    assert set(pols["default-deny"]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    grpc_ports = {
        p["port"] for r in pols["persona-serve-grpc"]["spec"]["ingress"] for p in r["ports"]
    }
    assert grpc_ports == {int(cfg["PERSONA_SERVE_PORT"])}
    metrics = {p["port"] for r in pols["persona-metrics"]["spec"]["ingress"] for p in r["ports"]}
    front = {p["containerPort"] for p in _serving("front")["ports"] if p["name"] != "grpc"}
    assert metrics == {int(cfg["PERSONA_METRICS_PORT"])} | front
    egress = {p["port"] for r in pols["persona-egress"]["spec"]["egress"] for p in r["ports"]}
    kafka_port = int(cfg["PERSONA_BOOTSTRAP"].rsplit(":", 1)[1])
    redis_port = int(cfg["PERSONA_REDIS"].rsplit(":", 1)[1].split("/")[0])
    assert {53, kafka_port, redis_port} <= egress
