"""The Go toolchain of the tests (Debian's Go 1.19 with the packaged grpc-go and protobuf-go
sources, GOPATH mode: no module proxy here) and what it builds for them: `go_env`, and
persona-front (`front/go`) built once a session, `front_bin`. Imported by the conftests and
test modules that need them (tests/clients, tests/front, tests/ops, tests/serving).

The toolchain comes from deploy/ensure-client-tools.sh (`make test` runs it); a test that
needs it skips, saying what is missing, only when it is absent."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["DEBIAN_GOPATH", "ENSURE", "GO_DIR", "GO_IMPORT", "build", "front_bin", "go_env"]

ROOT = Path(__file__).resolve().parents[1]
FRONT_DIR = ROOT / "front" / "go"
GO_DIR = ROOT / "clients" / "go"
GO_IMPORT = "persona/clients/go"  # the go_package prefix of proto/persona/v1
DEBIAN_GOPATH = Path("/usr/share/gocode")
ENSURE = "deploy/ensure-client-tools.sh (run by `make test`; apt-get and npm)"


def _go_missing() -> str | None:
    for tool in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed: {ENSURE} installs Debian's Go toolchain"
    src = DEBIAN_GOPATH / "src"
    if not (src / "google.golang.org" / "grpc").is_dir():
        return f"grpc-go sources missing under {DEBIAN_GOPATH}: {ENSURE} (golang-google-grpc-dev)"
    if not (src / "github.com" / "golang" / "protobuf" / "proto" / "registry.go").is_file():
        return (
            f"github.com/golang/protobuf under {DEBIAN_GOPATH} is 1.3 (cannot decode "
            f"protoc-gen-go 1.28 messages): {ENSURE} (golang-github-golang-protobuf-1-5-dev)"
        )
    return None


@pytest.fixture(scope="session")
def go_env() -> dict[str, str]:
    """GOPATH mode over Debian's packaged sources: clients/go appears at its import path
    in a GOPATH of its own (clients/go/.gopath, git-ignored), beside /usr/share/gocode."""
    why = _go_missing()
    if why:
        pytest.skip(why)
    gopath = GO_DIR / ".gopath"
    link = gopath / "src" / GO_IMPORT
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(GO_DIR, target_is_directory=True)
    return {
        **os.environ,
        "GOPATH": f"{gopath}:{DEBIAN_GOPATH}",
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOCACHE": str(gopath / "cache"),
        "GRPC_GO_RETRY": "on",  # grpc-go < 1.40 applies service-config retries only so
    }


def build(go_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """front/go/build.sh (GOPATH mode over Debian's packaged sources) with `args`."""
    return subprocess.run([str(FRONT_DIR / "build.sh"), *args], env=go_env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="session")
def front_bin(go_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("front") / "persona-front"
    proc = build(go_env, str(out))
    assert proc.returncode == 0, proc.stderr
    return out
