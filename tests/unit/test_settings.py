"""The settings tree (services/cli/settings.py) and the flags checked against it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from services.cli import build_parser, main, parse
from services.cli.settings import BY_PATH, SETTINGS, SettingsError, get, help_text, load
from tests.ops.support import ROOT, literal_env_reads

# Where a PERSONA_* variable may still be read outside the tree: the credentials, read where
# the connection is made so they never sit in a config object (services/config.py says why).
CREDENTIAL_READERS = {"services/store/client.py", "services/common/kafka.py"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("PERSONA_")]:
        monkeypatch.delenv(key)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(sub.choices)


def test_every_setting_is_a_field_with_help_and_one_variable() -> None:
    settings = load()
    assert len({s.var for s in SETTINGS}) == len(SETTINGS), "a variable named twice"
    for s in SETTINGS:
        get(settings, s.path)  # the path is a field of the tree
        assert help_text(s.path), f"{s.path} has no help (its config's Args: docstring)"
    from services.index.config import IndexConfig

    settable = {s.path for s in SETTINGS}
    assert {f"index.{f.name}" for f in fields(IndexConfig) if f.name != "dim"} <= settable
    assert {"serve.limits.max_k", "serve.limits.max_seeds", "serve.limits.max_history"} <= settable


def test_env_is_read_only_by_the_tree_except_credentials() -> None:
    tree = {s.var for s in SETTINGS}
    for path, names in literal_env_reads().items():
        if path.startswith("services/demo/") or path.startswith("encoder/"):
            continue
        assert path in CREDENTIAL_READERS, f"{path} reads {sorted(names)} outside the tree"
        assert all(n.startswith("PERSONA_") for n in names)
    for name in ("PERSONA_REDIS_PASSWORD", "PERSONA_KAFKA_SASL_PASSWORD_FILE"):
        assert name in tree


def test_flags_are_declared_against_the_tree_with_help_and_defaults() -> None:
    from services.cli import COMMAND_MODULES

    own = set(COMMAND_MODULES)
    for name, p in _subparsers().items():
        for action in p._actions:  # noqa: SLF001
            if not action.option_strings or action.dest == "help":
                continue
            path = getattr(action, "setting", None)
            if path is not None:
                assert path in BY_PATH, f"persona {name} {action.option_strings}: {path}?"
                assert action.default is None, "a setting's default lives in its config only"
            elif p.get_default("func").__module__ in own:
                assert action.help, f"persona {name} {action.option_strings} has no help"
        text = p.format_help()
        for action in p._actions:  # noqa: SLF001
            if getattr(action, "setting", None) and action.const is None:
                assert f"env {BY_PATH[action.setting].var}" in " ".join(text.split())  # type: ignore[attr-defined]


def test_precedence_flag_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse(["refresh"]).settings.refresh.batch_size == 512
    monkeypatch.setenv("PERSONA_REFRESH_BATCH", "64")
    args = parse(["refresh"])
    assert (args.settings.refresh.batch_size, args.batch_size) == (64, 64)
    assert parse(["refresh", "--batch-size", "8"]).settings.refresh.batch_size == 8
    assert parse(["refresh", "--float16"]).settings.refresh.dtype == "float16"
    assert parse(["refresh"]).settings.refresh.compile is False
    assert parse(["refresh", "--compile"]).settings.refresh.compile is True
    assert parse(["refresh", "--ttl-s", "0"]).settings.refresh.ttl_s is None
    monkeypatch.setenv("PERSONA_TOPIC", "t")
    s = parse(["ingest"]).settings.kafka
    assert (s.topic, s.dlq_topic) == ("t", "t.dlq")  # the dead letters follow the topic
    monkeypatch.setenv("PERSONA_STORE_TIMEOUT_MS", "250")
    assert parse(["serve"]).settings.serve.store_timeout_s == 0.25
    assert parse(["serve"]).settings.serve.port == 50051  # the command's default


def test_bad_values_are_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PERSONA_METRICS_PORT", "abc")
    with pytest.raises(SystemExit) as info:  # help still works, and shows the raw value
        main(["ingest", "--help"])
    assert info.value.code == 0
    assert "'abc' from PERSONA_METRICS_PORT" in " ".join(capsys.readouterr().out.split())
    assert main(["ingest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("persona ingest: PERSONA_METRICS_PORT='abc'")
    monkeypatch.delenv("PERSONA_METRICS_PORT")
    assert main(["refresh", "--batch-size", "0"]) == 2  # RefreshConfig's own check
    assert "batch_size" in capsys.readouterr().err
    monkeypatch.setenv("PERSONA_VECTOR_DTYPE", "float8")
    with pytest.raises(SettingsError, match="PERSONA_VECTOR_DTYPE='float8'"):
        parse(["refresh"])
    monkeypatch.setenv("PERSONA_VECTOR_DTYPE", "float32")
    monkeypatch.setenv("PERSONA_REDIS_PASSWORD", "")  # empty = unset
    monkeypatch.setenv("PERSONA_KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(SettingsError) as e:
        parse(["ingest"])
    assert "PERSONA_KAFKA_SECURITY_PROTOCOL='TLS'" in str(e.value)


def test_the_process_reports_a_bad_value_without_a_traceback() -> None:
    env = {**os.environ, "PERSONA_METRICS_PORT": "abc"}
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "ingest"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "persona ingest: PERSONA_METRICS_PORT='abc': Input should be a valid integer,"
        " unable to parse string as an integer"
    ]


def test_persona_config_shows_sources_and_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PERSONA_REDIS_PASSWORD", "hunter2")
    monkeypatch.setenv("PERSONA_AUTH_TOKEN", "tok")
    monkeypatch.setenv("PERSONA_MAX_K", "5")
    assert main(["config", "--json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and 'tok"' not in out
    rows = {r["variable"]: r for r in map(json.loads, out.splitlines())}
    assert set(rows) == {s.var for s in SETTINGS}
    assert rows["PERSONA_REDIS_PASSWORD"]["value"] == "***"
    assert rows["PERSONA_MAX_K"] == {**rows["PERSONA_MAX_K"], "value": "5", "source": "env"}
    assert rows["PERSONA_REFRESH_BATCH"]["source"] == "default"
    assert rows["PERSONA_SERVE_PORT"]["source"] == "command default"
    assert main(["config", "serve.limits", "--changed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].split() == ["PERSONA_MAX_K", "5", "env"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("persona ")


def test_raw_values_convert_before_validation() -> None:
    from services.cli.settings import Setting

    assert Setting("index.x", "X").convert("[10, 50]") == [10, 50]  # a list field, as JSON
    assert Setting("index.x", "X").convert("[oops") == "[oops"  # left for pydantic to refuse
    assert Setting("serve.x", "X", unit_ms=True).convert("250") == 0.25
    assert Setting("refresh.x", "X", none_if=("", "0")).convert("0") is None
