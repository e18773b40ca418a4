"""Fixtures of the client tests: the serving tests' live server (a real Valkey, db 9, and a
real index; tests/serving/conftest.py), and the Go and Node toolchains.

The toolchains come from deploy/ensure-client-tools.sh (`make test` runs it). A test that
needs one skips, saying what is missing and how to install it, only when it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import holder, running, serve, users, vstore
from tests.serving.support import unit

__all__ = [
    "check_neighbors", "go_env", "go_fetch", "holder", "node", "running", "serve", "users",
    "vstore",
]  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "clients" / "go"
NODE_DIR = ROOT / "clients" / "node"
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


@pytest.fixture(scope="session")
def go_fetch(go_env: dict[str, str]) -> Path:
    """clients/go/cmd/persona-fetch, built."""
    out = GO_DIR / ".gopath" / "bin" / "persona-fetch"
    proc = subprocess.run(
        ["go", "build", "-o", str(out), f"{GO_IMPORT}/cmd/persona-fetch"],
        env=go_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with clients/node's dependencies installed."""
    exe = shutil.which("node")
    if exe is None:
        pytest.skip(f"node not installed: {ENSURE} installs nodejs and npm")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip(f"clients/node dependencies missing (npm ci): {ENSURE}")
    return exe


def check_neighbors(got: dict[str, list], vectors: dict[str, np.ndarray], uid: str) -> None:
    """A client's `neighbors` / `scores` for `uid` are the exact cosine top k, in order."""
    sims = {w: float(unit(v) @ unit(vectors[uid])) for w, v in vectors.items()}
    want = sorted(sims, key=lambda w: -sims[w])[: len(got["neighbors"])]
    assert got["neighbors"] == want and len(want) > 1
    np.testing.assert_allclose(got["scores"], [sims[w] for w in want], atol=1e-5)
