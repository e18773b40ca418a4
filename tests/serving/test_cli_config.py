"""`persona serve` flags -> ServeConfig: the token from a file or the environment only."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import build_parser, parse
from services.cli.serve_cmds import serve_config
from services.cli.settings import SettingsError


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
