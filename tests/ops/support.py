"""Helpers for the ops checks: paths, what the code reads and exports, PromQL name scraping."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = ROOT / "k8s"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "persona.json"
RUNBOOK = ROOT / "docs" / "operations.md"
VENV_BIN = Path(sys.executable).parent

# Where the code reads settings from the environment: the settings tree
# (services/cli/settings.py) and literal "PERSONA_..." lookups (os.environ.get(...)).
CODE_DIRS = (ROOT / "contract", ROOT / "services", ROOT / "encoder")
_ENV_LITERAL = re.compile(r"""environ(?:\.get)?[\(\[]\s*["'](PERSONA_[A-Z0-9_]+)["']""")
_ENV_FSTRING = re.compile(r"""(?:env|environ)(?:\.get)?[\(\[]\s*f["'](PERSONA_[A-Z0-9_]*)\{""")

# Variables a deployment may set that are not Persona settings, each read by the runtime.
RUNTIME_ENV = {
    "TMPDIR",  # Python's tempfile
    "PYTHONUNBUFFERED",
    "OMP_WAIT_POLICY",  # OpenMP / OpenBLAS thread behaviour (Makefile, ENVIRONMENT.md)
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",  # torch's intra-op threads (k8s/refresh-cpu.yaml: the pod's CPU limit)
    "GOMAXPROCS",  # the Go front's runtime (k8s/serve.yaml: its CPU limit)
    "GOMEMLIMIT",
}

# Labels Prometheus attaches at scrape time (or histogram internals), valid in any query.
TARGET_LABELS = {"job", "instance", "le", "namespace", "pod", "cluster"}
# Series that come from Prometheus itself, not from the code.
PROMETHEUS_SERIES = {"up"}


def env_vars_read_by_code() -> set[str]:
    """Every PERSONA_* variable in the settings tree, plus literal lookups elsewhere."""
    from services.cli.settings import SETTINGS

    found = {s.var for s in SETTINGS}
    for base in CODE_DIRS:
        for path in base.rglob("*.py"):
            found |= set(_ENV_LITERAL.findall(path.read_text()))
    return found


def literal_env_reads() -> dict[str, set[str]]:
    """{file: PERSONA_* names} read outside the tree by a literal or f-string lookup."""
    out: dict[str, set[str]] = {}
    for base in CODE_DIRS:
        for path in base.rglob("*.py"):
            text = path.read_text()
            names = set(_ENV_LITERAL.findall(text)) | set(_ENV_FSTRING.findall(text))
            if names:
                out[str(path.relative_to(ROOT))] = names
    return out


def parse_persona(argv: list[str]) -> argparse.Namespace:
    """Parse a `persona` command line with the real parser and resolve its settings (with the
    environment as it is now); SystemExit means it is not a command line, SettingsError that
    a value is refused. Flags for settings hold their effective values afterwards."""
    from services.cli import parse

    return parse(argv)


def subcommands() -> set[str]:
    from services.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return set(action.choices)
    raise AssertionError("persona has no subcommands")


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


# --- metrics -----------------------------------------------------------------------------

_PERSONA_NAME = re.compile(r"\bpersona_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\b(persona_[a-z0-9_]+|up)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def promql_metric_names(expr: str) -> set[str]:
    """`persona_*` metric names an expression selects (recording rules are `persona:*`)."""
    return set(_PERSONA_NAME.findall(expr))


def promql_selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names in its {matchers}) for each selector with matchers."""
    out = []
    for name, body in _SELECTOR.findall(expr):
        body = re.sub(r'"(?:[^"\\]|\\.)*"', '""', body)  # drop values: a regex may hold '='
        out.append((name, set(_MATCHER.findall(body))))
    return out


def promql_grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for body in _GROUPING.findall(expr):
        labels |= {s.strip() for s in body.split(",") if s.strip()}
    return labels


def base_metric(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def exposition_names(text: str) -> set[str]:
    """Every series name a /metrics page can hold, from its `# HELP` / `# TYPE` lines.

    A labelled metric with no children yet still has those lines. Counters get `_total`
    (prometheus_client writes the TYPE line with or without it), histograms
    `_bucket/_sum/_count`, summaries `_sum/_count`; `_created` where the client adds it.
    """
    names: set[str] = set()
    types: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#" and parts[1] in ("HELP", "TYPE"):
            names.add(parts[2])
            if parts[1] == "TYPE" and len(parts) >= 4:
                types[parts[2]] = parts[3]
    for name, kind in types.items():
        if kind == "counter":
            stem = name.removesuffix("_total")
            names |= {stem, f"{stem}_total", f"{stem}_created"}
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        elif kind == "summary":
            names |= {f"{name}_sum", f"{name}_count", f"{name}_created"}
    return names


def code_metric_labels() -> dict[str, set[str]]:
    """Base metric name -> label names, from the metric objects built on a fresh registry.

    A scrape cannot tell this for a labelled metric that has no children yet.
    """
    from dataclasses import fields

    from prometheus_client import CollectorRegistry

    from services.index.metrics import index_metrics
    from services.ingest.metrics import ingest_metrics
    from services.refresh.metrics import refresh_metrics
    from services.serving.metrics import serving_metrics

    registry = CollectorRegistry()
    out: dict[str, set[str]] = {}
    for build in (ingest_metrics, refresh_metrics, serving_metrics, index_metrics):
        bundle = build(registry)
        for f in fields(bundle):
            metric = getattr(bundle, f.name)
            out[base_metric(metric._name)] = set(metric._labelnames)  # noqa: SLF001
    return out


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' nested panels included."""
    dash = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for p in panels:
            for t in p.get("targets", []):
                yield p.get("title", "?"), t["expr"]
            yield from walk(p.get("panels", []))

    yield from walk(dash["panels"])


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def github_slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")
