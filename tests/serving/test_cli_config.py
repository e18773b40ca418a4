"""`persona serve` flags -> ServeConfig: the token from a file or the environment only."""

from __future__ import annotations

import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.cli import build_parser, parse
from services.cli.runtime import metrics_endpoint
from services.cli.serve_cmds import serve_config
from services.cli.settings import SettingsError
from services.index.holder import IndexHolder
from services.serving.server import ServingServer
from services.stack import free_ports
from tests.serving.support import BASE


def cfg(*argv: str):  # type: ignore[no-untyped-def]
    return serve_config(parse(["serve", "--dim", "8", *argv]))


def test_token_from_file_or_env_never_a_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERSONA_AUTH_TOKEN", raising=False)
    assert cfg().auth_token is None
    f = tmp_path / "token"
    f.write_text("from-file\n")
    c = cfg("--auth-token-file", str(f))
    assert c.auth_token == "from-file"
    assert "from-file" not in repr(c)
    monkeypatch.setenv("PERSONA_AUTH_TOKEN", "from-env")
    assert cfg().auth_token == "from-env"
    f.write_text("  \n")
    with pytest.raises(SystemExit):
        cfg("--auth-token-file", str(f))
    with pytest.raises(SystemExit):  # there is no flag that takes the token itself
        build_parser().parse_args(["serve", "--auth-token", "x"])


def test_tls_flags(tmp_path: Path) -> None:
    c = cfg("--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem")
    assert c.tls is not None and c.tls.client_ca == Path("ca.pem")
    assert cfg("--port", "7000").tls is None and cfg("--port", "7000").port == 7000
    for bad in (["--tls-cert", "c.pem"], ["--tls-client-ca", "ca.pem"]):
        with pytest.raises(SystemExit):
            cfg(*bad)


def test_concurrency_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONA_MAX_CONCURRENT_RPCS", raising=False)
    assert cfg().max_concurrent_rpcs == 64 and cfg().workers == 16
    c = cfg("--workers", "4", "--max-concurrent-rpcs", "12")
    assert (c.workers, c.max_concurrent_rpcs) == (4, 12)
    assert cfg("--max-concurrent-rpcs", "0").max_concurrent_rpcs is None  # no limit
    monkeypatch.setenv("PERSONA_MAX_CONCURRENT_RPCS", "32")
    assert cfg().max_concurrent_rpcs == 32


def test_limits_and_index_are_settable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_MAX_K", "50")
    monkeypatch.setenv("PERSONA_INDEX_IVF_NPROBE", "4")
    args = parse(["serve", "--max-seeds", "7"])
    c = serve_config(args)
    assert (c.limits.max_k, c.limits.max_seeds, c.limits.max_batch) == (50, 7, 1000)
    assert args.settings.index.ivf_nprobe == 4
    monkeypatch.setenv("PERSONA_INDEX_IVF_NPROBE", "0")  # IndexConfig's own check refuses it
    with pytest.raises(SettingsError, match="ivf_nprobe"):
        parse(["serve"])


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_token_is_refused_not_taken_for_no_auth(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Issue #18: PERSONA_AUTH_TOKEN="" served every caller, without a word."""
    monkeypatch.setenv("PERSONA_AUTH_TOKEN", value)
    with pytest.raises(SystemExit, match="PERSONA_AUTH_TOKEN is set but empty"):
        cfg()
    with pytest.raises(ValueError, match="auth_token is empty"):
        ServingServer(replace(BASE, auth_token=value), None, IndexHolder(), None)  # type: ignore[arg-type]


def test_listen_addresses_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC (`--host`, PERSONA_SERVE_HOST) and /metrics (`--metrics-host`,
    PERSONA_METRICS_HOST; every interface by default) bind where they are told (issue #18:
    /metrics was bound to 0.0.0.0 whatever was configured)."""
    for name in ("PERSONA_SERVE_HOST", "PERSONA_METRICS_HOST"):
        monkeypatch.delenv(name, raising=False)
    (port,) = free_ports(1)
    args = parse(["serve", "--metrics-port", str(port)])
    assert args.settings.process.metrics_host == "0.0.0.0"
    args = parse(["serve", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1",
                  "--metrics-port", str(port)])  # fmt: skip
    assert serve_config(args).host == "127.0.0.1"
    with metrics_endpoint(args.settings.process, CollectorRegistry()) as bound:
        assert bound == ("127.0.0.1", port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
    monkeypatch.setenv("PERSONA_METRICS_HOST", "127.0.0.1")
    monkeypatch.setenv("PERSONA_SERVE_HOST", "::1")
    args = parse(["serve"])
    assert (args.settings.process.metrics_host, serve_config(args).host) == ("127.0.0.1", "::1")
    with metrics_endpoint(args.settings.process, CollectorRegistry()) as bound:
        assert bound is None  # port 0: no endpoint
