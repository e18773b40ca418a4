"""Prometheus config, alert rules and their unit tests, checked with promtool.

- `promtool check config` on prometheus.yml (its rule_files included);
- `promtool check rules` on alerts.yml;
- `promtool test rules` on alerts_test.yml, and every alert in alerts.yml has a case in it
  where it fires (exp_alerts not empty); the alerts the issue asks for are all there;
- every alert's runbook_url is absolute, from one base URL, and points at a heading that
  exists in docs/operations.md;
- every dashboard query is valid PromQL (promtool checks them as recording rules).
Which metric names these use is checked against a live scrape in test_ops_metrics.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.ops.support import PROM, RUNBOOK, dashboard_exprs, github_slug, rules

REQUIRED_ALERTS = {
    "PersonaConsumerLagGrowing",  # consumer lag growing
    "PersonaDeadLetterRate",  # dead-letter rate
    "PersonaEmbeddingStalenessHigh",  # embedding staleness p99 above objective
    "PersonaRefreshStalled",  # refresh stalled
    "PersonaServingErrorBudgetBurn",  # serving error rate
    "PersonaServingLatencyP99High",  # serving p99 latency above objective
    "PersonaIndexLagging",  # index lagging the update log
}


def _promtool(promtool: Path, *args: str, cwd: Path = PROM) -> None:
    proc = subprocess.run(
        [str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def test_check_config(promtool: Path) -> None:
    _promtool(promtool, "check", "config", "prometheus.yml")


def test_check_rules(promtool: Path) -> None:
    _promtool(promtool, "check", "rules", "alerts.yml")


def test_rule_unit_tests(promtool: Path) -> None:
    _promtool(promtool, "test", "rules", "alerts_test.yml")


def test_every_alert_has_a_firing_case() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts >= REQUIRED_ALERTS, f"missing: {sorted(REQUIRED_ALERTS - alerts)}"
    doc = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts <= fired, f"alerts never shown firing: {sorted(alerts - fired)}"
    quiet = {
        case["alertname"]
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert alerts <= quiet, f"alerts without a must-not-fire case: {sorted(alerts - quiet)}"


def test_runbook_links_are_absolute_from_one_base_and_resolve() -> None:
    """Absolute links (`make runbook-links RUNBOOK_BASE_URL=...` sets the base), each to a
    heading of docs/operations.md."""
    import importlib.util

    anchors = {
        github_slug(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("#")
    }
    bases = set()
    for r in rules():
        if "alert" not in r:
            continue
        url = r["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert re.fullmatch(r"https?://[^/]+/.*/operations\.md", path), url
        bases.add(path.removesuffix("/operations.md"))
        assert anchor in anchors, f"{r['alert']}: no heading for #{anchor} in {RUNBOOK.name}"
    assert len(bases) == 1, bases
    spec = importlib.util.spec_from_file_location("runbook_base", PROM / "runbook_base.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for path in tool.FILES:
        text = path.read_text()
        assert tool.current_base(text) == bases, path.name  # rules and their tests agree
        moved = tool.LINK.sub(lambda m: f"{m.group(1)}https://x.test/d/operations.md#", text)
        assert tool.current_base(moved) == {"https://x.test/d"}
        assert moved.count("operations.md#") == text.count("operations.md#")


def test_dashboard_queries_are_valid_promql(promtool: Path, tmp_path: Path) -> None:
    exprs = list(dashboard_exprs())
    assert len(exprs) >= 20
    group = {
        "name": "dashboard",
        "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, (_, e) in enumerate(exprs)],
    }
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [group]}))
    _promtool(promtool, "check", "rules", "dashboard_rules.yml", cwd=tmp_path)
